"""Helpers for fuzzing the API: a fingerprint of what the database holds, waiting for the worker to go
idle, the RFC 9457 shape every 4xx must have, a small seeded world for ids that hit real rows, and the
values that steer schemathesis' generation towards them and towards hostile input."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from hypothesis import strategies as st
from schemathesis import APIOperation, Case

from sovra.domain.operation import OperationState
from sovra.store import operations as operation_store
from sovra.store.database import Database
from sovra.store.schema import (
    api_tokens,
    edges,
    operation_steps,
    operations,
    resource_labels,
    resources,
    role_bindings,
)
from tests.support.live_server import LiveServer

FINGERPRINT_TABLES = (
    resources,
    resource_labels,
    edges,
    operations,
    operation_steps,
    api_tokens,
    role_bindings,
)
"""What a 4xx must leave alone. Not ``audit_records``: every mutating call is audited, refused or not."""
PROBLEM_JSON = "application/problem+json"
SOON = timedelta(minutes=10)


def fingerprint(db: Database) -> dict[str, dict[str, Any]]:
    """Per table: row count, max(version) and max(updated_at) where the table has them, and a digest of
    every row, so that an update that leaves counts and maxima alone is noticed as well.

    One read of each table, in one transaction: the tables stay small during a fuzz run.
    """
    result: dict[str, dict[str, Any]] = {}
    with db.read() as conn:
        for table in FINGERPRINT_TABLES:
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings().all()
            summary: dict[str, Any] = {"rows": len(rows)}
            for column in ("version", "updated_at"):
                if column in table.c:
                    summary[f"max_{column}"] = max((r[column] for r in rows), default=None)
            digest = hashlib.sha256()
            for row in rows:
                digest.update(json.dumps(list(row.values()), default=str, sort_keys=True).encode())
            summary["digest"] = digest.hexdigest()[:16]
            result[table.name] = summary
    return result


def fingerprint_diff(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for table, values in before.items():
        for key, old in values.items():
            new = after[table][key]
            if old != new:
                lines.append(f"{table}.{key}: {old!r} -> {new!r}")
    return "; ".join(lines)


def wait_until_idle(db: Database, timeout: float = 15.0) -> None:
    """Wait until no operation is running or due soon, so that the in-process worker writes no more.

    A retry backs off for seconds, so an operation due within ``SOON`` is waited for (and fails the
    wait if it takes longer than ``timeout``); one scheduled later, like the seeded one, is not.
    """
    deadline = time.monotonic() + timeout
    busy = sa.or_(
        operations.c.state == str(OperationState.RUNNING),
        sa.and_(
            operations.c.state == str(OperationState.PENDING),
            operations.c.not_before <= sa.bindparam("soon"),
        ),
    )
    query = sa.select(sa.func.count()).select_from(operations).where(busy)
    while True:
        with db.read() as conn:
            active = conn.execute(query, {"soon": datetime.now(UTC) + SOON}).scalar_one()
        if not active:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{active} operation(s) still running or due soon after {timeout}s")
        time.sleep(0.02)


def reset(db: Database) -> None:
    """Empty the fingerprinted tables once the worker is idle (the audit trail is append-only: it stays)."""
    wait_until_idle(db)
    with db.write() as conn:
        for table in reversed(FINGERPRINT_TABLES):
            conn.execute(table.delete())


def problem_violations(status: int, content_type: str | None, body: bytes) -> list[str]:
    """What is wrong with a 4xx/5xx answer as an RFC 9457 problem document (empty when it is one)."""
    found = []
    if (content_type or "").split(";")[0].strip().lower() != PROBLEM_JSON:
        found.append(f"Content-Type is {content_type!r}, not {PROBLEM_JSON}")
    try:
        document = json.loads(body)
    except ValueError:
        return [*found, f"body is not JSON: {body[:200]!r}"]
    if not isinstance(document, dict):
        return [*found, f"body is not a JSON object: {document!r}"]
    for name in ("type", "title", "detail"):
        if not isinstance(document.get(name), str) or not document[name]:
            found.append(f"{name!r} is missing or not a non-empty string: {document.get(name)!r}")
    if document.get("status") != status or isinstance(document.get("status"), bool):
        found.append(f"'status' is {document.get('status')!r}, the HTTP status is {status}")
    return found


def send(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """``client.request``, waiting out the per-principal rate limit (429 and Retry-After) a few times."""
    for _ in range(5):
        response = client.request(method, url, **kwargs)
        if response.status_code != 429:
            break
        time.sleep(float(response.headers.get("retry-after", "1")))
    return response


@dataclass
class Seed:
    """Real rows for generated ids to hit: projects, edges between them, finished and pending operations."""

    projects: dict[str, str] = field(default_factory=dict)  # name -> id
    operations: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


def seed(server: LiveServer) -> Seed:
    """Create a few projects (``fuzz-<name>``) and edges through the API, plus one finished and one
    waiting operation, API tokens and a role binding.

    * ``b uses a``: deleting ``a`` is refused (409) while ``b`` lives.
    * ``c runs-on a``, ``d derived-from c``, ``a owns e``: graph walks and teardown orders have depth.
    * ``spare`` has no edges: what the explicit probes of DELETE /v1/projects aim at.
    * ``gone`` is deleted at once: a SUCCEEDED ``project.delete`` operation with steps.
    * a ``noop`` operation on ``d`` scheduled for tomorrow stays PENDING: cancellable, and it blocks
      deleting ``d`` (409).
    * a reader token of ``a``, a global admin token, ``group:fuzz`` as a member of ``a``, and an image
      (without versions) in ``a``.
    """
    world = Seed()
    with server.client() as client:
        for name in ("a", "b", "c", "d", "e", "spare", "gone"):
            response = send(
                client,
                "POST",
                "/v1/projects",
                json={"name": f"fuzz-{name}", "labels": {"env": "fuzz", "tier": name}, "spec": {}},
            )
            assert response.status_code == 201, response.text
            world.projects[name] = response.json()["id"]
        p = world.projects
        for source, kind, target in (
            ("b", "uses", "a"),
            ("c", "runs-on", "a"),
            ("d", "derived-from", "c"),
            ("a", "owns", "e"),
        ):
            response = send(
                client,
                "POST",
                "/v1/edges",
                json={"source_id": p[source], "type": kind, "target_id": p[target]},
            )
            assert response.status_code == 201, response.text
        response = send(client, "DELETE", f"/v1/projects/{p.pop('gone')}")
        assert response.status_code == 202, response.text
        world.operations.append(response.json()["id"])
        for path, role in ((f"/v1/projects/{p['a']}/tokens", "reader"), ("/v1/tokens", "admin")):
            response = send(client, "POST", path, json={"name": f"fuzz-{role}", "role": role})
            assert response.status_code == 201, response.text
            world.tokens.append(response.json()["id"])
        world.subjects.append("group:fuzz")
        response = send(client, "PUT", f"/v1/projects/{p['a']}/members/group:fuzz", json={"role": "reader"})
        assert response.status_code == 200, response.text
        response = send(client, "POST", f"/v1/projects/{p['a']}/images", json={"name": "fuzz-image"})
        assert response.status_code == 201, response.text
        world.images.append(response.json()["id"])
    wait_until_idle(server.db)
    with server.db.write() as conn:
        operation, _ = operation_store.create(
            conn, verb="noop", principal="admin", project_id=p["d"], target_id=p["d"], target_kind="Project"
        )
        conn.execute(
            sa.update(operations)
            .where(operations.c.id == operation.id)
            .values(not_before=datetime.now(UTC) + timedelta(days=1))
        )
    world.operations.append(operation.id)
    return world


NAME = r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
LABEL = r"[a-z]([a-z0-9._-]{0,6}[a-z0-9])?"


def known_values(world: Seed) -> dict[str, st.SearchStrategy[Any]]:
    """Values that get past validation, by parameter or field name, for ``swap_values``."""
    projects = st.sampled_from(sorted(world.projects.values()))
    return {
        "project_id": projects,
        "resource_id": projects,
        "source_id": projects,
        "target_id": projects,
        "operation_id": st.sampled_from(world.operations),
        "name": st.from_regex(NAME, fullmatch=True),
        "labels": st.dictionaries(
            st.from_regex(LABEL, fullmatch=True), st.from_regex(LABEL, fullmatch=True), max_size=3
        ),
        "request_id": st.sampled_from(["fuzz-1", "fuzz-2"]),
        "if-match": st.sampled_from(["*", '"1"', 'W/"2"', '"3"', '"999999"']),
        "token_id": st.sampled_from(world.tokens),
        "subject": st.sampled_from([*world.subjects, "group:other", f"token:{world.tokens[0]}"]),
        "role": st.sampled_from(["reader", "member", "manager", "admin"]),
        "image_id": st.sampled_from(world.images),
    }


HOSTILE = ("\x00", "a\x00b", "%00", "' OR '1'='1", "../..", "\u00e9\u4e2d\U0001f642", " ", "x" * 300)
"""Strings that break naive code: NUL (PostgreSQL refuses it in text), SQL, traversal, non-ASCII, long."""


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


def swap_values(
    known: Mapping[str, st.SearchStrategy[Any]], hostile: bool = True
) -> Callable[[Any], st.SearchStrategy[Any]]:
    """For ``strategy.flatmap``: vary what schemathesis generated for parameters or body fields.

    A value named in ``known`` becomes a known good one half of the time, so that the fuzzer gets
    past "not found" and "invalid name" into the handlers' real work. With ``hostile``, a string
    becomes one of ``HOSTILE`` 1 time in 4 (1 in 5 if it is not in ``known``). Nested objects are
    varied field by field.
    """

    def vary(key: Any, value: Any) -> st.SearchStrategy[Any]:
        kept = swap(value) if isinstance(value, Mapping) else st.just(value)
        good = known.get(key.lower()) if isinstance(key, str) else None
        bad = st.sampled_from(HOSTILE) if hostile and isinstance(value, str) else kept
        if good is None:
            return kept if bad is kept else _weighted((4, kept), (1, bad))
        return _weighted((1, kept), (2, good), (1, bad))

    def swap(values: Any) -> st.SearchStrategy[Any]:
        if not isinstance(values, Mapping):
            return st.just(values)
        return st.fixed_dictionaries({key: vary(key, value) for key, value in values.items()})

    return swap


def well_formed(world: Seed) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Path parameter values by name, and request bodies by operation label, that pass validation.

    They aim at rows where a success does no harm to the rest of the run (``spare``, ``e``).
    """
    p = world.projects
    path = {
        "project_id": p["spare"],
        "resource_id": p["a"],
        "source_id": p["b"],
        "edge_type": "uses",
        "target_id": p["a"],
        "operation_id": world.operations[-1],
        "token_id": world.tokens[0],
        "subject": world.subjects[0],
        "image_id": world.images[0],
    }
    bodies: dict[str, dict[str, Any]] = {
        "POST /v1/projects": {"name": "probe", "labels": {"env": "probe"}, "spec": {"description": "p"}},
        "PATCH /v1/projects/{project_id}": {
            "name": "probed",
            "labels": {"env": "probe"},
            "spec": {"description": "p"},
        },
        "POST /v1/edges": {"source_id": p["e"], "type": "uses", "target_id": p["c"]},
        "POST /v1/tokens": {"name": "probe", "role": "admin", "expires_in_days": 1},
        "POST /v1/projects/{project_id}/tokens": {"name": "probe", "role": "reader", "expires_in_days": 1},
        "PUT /v1/projects/{project_id}/members/{subject}": {"role": "member"},
        "POST /v1/projects/{project_id}/images": {
            "name": "probe-image",
            "labels": {"env": "probe"},
            "spec": {"description": "p"},
        },
        "PATCH /v1/images/{image_id}": {"labels": {"env": "probe"}, "spec": {"description": "p"}},
    }
    return path, bodies


PROBES = ("nul\x00", "x" * 300)
"""What every free-form string parameter and body field is set to, one at a time, in explicit probes:
a NUL character (long enough for a ``min_length`` of 3 or 4), and a string longer than any field."""


def _free_string(schema: Mapping[str, Any]) -> bool:
    """Whether a parameter schema admits arbitrary strings (a plain string, or one in ``anyOf``)."""
    options = schema.get("anyOf", [schema])
    return any(o.get("type") == "string" and "enum" not in o and "$ref" not in o for o in options)


def _with_leaf(document: Mapping[str, Any], value: Any) -> Iterator[dict[str, Any]]:
    """Copies of ``document`` with one string leaf replaced by ``value``, for each string leaf."""
    for key, current in document.items():
        if isinstance(current, str):
            yield {**document, key: value}
        elif isinstance(current, Mapping):
            for inner in _with_leaf(current, value):
                yield {**document, key: inner}


def probe_cases(operation: APIOperation, world: Seed) -> list[Case]:
    """Well-formed requests to ``operation`` with one string (path or query parameter, body field,
    nested or not) set to each of ``PROBES``: hostile input reaches the code behind every field,
    whatever the random generation happens to draw."""
    path_values, bodies = well_formed(world)
    path = {param.name: path_values.get(param.name, "x") for param in operation.path_parameters}
    body = bodies.get(operation.label)
    if body is None and operation.body:
        return []  # no well-formed body known for it: the fuzzing phase covers it
    extra: dict[str, Any] = {} if body is None else {"body": body}
    cases = []
    for value in PROBES:
        for param in operation.path_parameters:
            if _free_string(param.definition.get("schema", {})):
                cases.append(operation.Case(path_parameters={**path, param.name: value}, **extra))
        for param in operation.query:
            if _free_string(param.definition.get("schema", {})):
                cases.append(operation.Case(path_parameters=path, query={param.name: value}, **extra))
        for varied in _with_leaf(body or {}, value):
            cases.append(operation.Case(path_parameters=path, body=varied))
    return cases
