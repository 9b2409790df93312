"""Fuzz the real API over HTTP from its own OpenAPI document, on SQLite and PostgreSQL.

Every operation in /openapi.json (everything under /v1, /healthz, /readyz) gets schema-valid and
schema-violating requests from schemathesis, carrying the admin token. For each answer:

1. no 5xx, ever;
2. a 4xx is an RFC 9457 ``application/problem+json`` document whose ``status`` is the HTTP status;
3. a 4xx wrote nothing: the database fingerprint (row counts, max version/updated_at and a digest of
   the rows of resources, resource_labels, edges, operations, operation_steps, and of api_tokens and
   role_bindings too) is unchanged.

Before each operation is fuzzed (unless the one before only read), the database is emptied and
seeded with related projects, edges, operations, tokens, role bindings and an image. Generated ids,
names, labels, roles and If-Match values are often swapped for good ones so that requests reach the
handlers' real work, and strings are sometimes swapped for hostile ones (NUL, SQL, very long...).
Explicit probes put NUL and a long string in every free-form string, one at a time. Generation is
derandomized: a run is repeatable.

Why not ``schemathesis.pytest.from_fixture``: with the pytest installed here (9.2) its lazy runner
fails (``'Function' object has no attribute '_nodeid'``). So each operation runs as a Hypothesis test of
its own here, built from ``APIOperation.as_strategy``; every operation runs even if another fails,
and the test then fails listing each failing operation with a curl command that reproduces it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode

from tests.support.fuzz import (
    Seed,
    fingerprint,
    fingerprint_diff,
    known_values,
    probe_cases,
    problem_violations,
    reset,
    seed,
    swap_values,
    wait_until_idle,
    well_formed,
)
from tests.support.live_server import LiveServer, live_server

pytestmark = pytest.mark.filterwarnings(
    # schemathesis draws from the global `random` inside its strategies; Hypothesis seeds it per example.
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
)

GENERATED_PER_BACKEND = int(os.environ.get("SOVRA_FUZZ_REQUESTS", "1100"))
"""Generated requests per backend, shared out among the operations (plus explicit probes, seeding,
and shrinking on failure). With 75 operations: 14 examples each, ~1,100 fuzz requests per backend;
the file takes about two minutes on an idle 2-core machine. Raise it for a deeper (nightly) run."""
MIN_EXAMPLES, MAX_EXAMPLES = 12, 100
RATE_LIMIT_RETRIES = 5


def fuzz_settings(operations: int) -> settings:
    return settings(
        max_examples=min(MAX_EXAMPLES, max(MIN_EXAMPLES, GENERATED_PER_BACKEND // operations)),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        report_multiple_bugs=False,  # stop at the first failure of an operation: keeps a failing run short
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


class Violation(AssertionError):
    """An answer broke one of the rules."""


@dataclass
class Run:
    """What the fuzzing of one backend sent and found."""

    server: LiveServer
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (operation, status): count
    failures: list[str] = field(default_factory=list)

    def check(self, case: Case) -> None:
        """Send ``case`` with the admin token and hold the answer to the three rules."""
        db = self.server.db
        wait_until_idle(db)  # what an earlier 2xx started is done: the worker writes no more
        before = fingerprint(db)
        response = self.send(case)
        status = response.status_code
        self.statuses[case.operation.label, status] += 1
        request = case.as_curl_command(headers={"Authorization": "Bearer $SOVRA_TOKEN"})
        if status >= 500:
            raise Violation(f"{status} answer: {response.text[:1000]}\n{request}")
        if status < 400:
            return
        content_type = (response.headers.get("content-type") or [None])[0]
        violations = problem_violations(status, content_type, response.content)
        if violations:
            raise Violation(f"{status} answer is not a problem document: {violations}\n{request}")
        changed = fingerprint_diff(before, fingerprint(db))
        if changed:
            raise Violation(f"{status} answer, yet the database changed: {changed}\n{request}")

    def send(self, case: Case) -> schemathesis.Response:
        """Send ``case`` with the admin token; wait out the rate limit (429) a few times."""
        for _ in range(RATE_LIMIT_RETRIES):
            response = case.call(headers={"Authorization": f"Bearer {self.server.token}"}, timeout=30)
            if response.status_code != 429:
                break
            self.statuses[case.operation.label, 429] += 1
            time.sleep(float((response.headers.get("retry-after") or ["1"])[0]))
        return response

    def summary(self) -> str:
        lines = [f"{self.server.db.dialect}: {self.statuses.total()} requests"]
        for label in dict.fromkeys(label for label, _ in self.statuses):
            counts = {status: n for (op, status), n in sorted(self.statuses.items()) if op == label}
            lines.append(f"  {label:55} {counts}")
        return "\n".join(lines)


def load_schema(server: LiveServer) -> tuple[schemathesis.BaseSchema, dict[str, st.SearchStrategy[object]]]:
    """The schema the live server publishes, and the known good values (by name) that steer its
    generation: fill them with ``known_values`` of a seeded world before generating."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    schema.config.output.sanitization.update(enabled=False)  # reproductions show page_token as sent
    known: dict[str, st.SearchStrategy[object]] = {}
    for part in ("path_parameters", "query", "headers", "body"):
        # Header values cannot carry NUL or non-Latin-1 characters: no hostile strings there.
        swap = swap_values(known, hostile=part != "headers")
        schema.hook(f"before_generate_{part}")(_flatmapped(swap))
    return schema, known


def _flatmapped(swap: Callable[..., st.SearchStrategy[object]]) -> Callable[..., st.SearchStrategy[object]]:
    def hook(_context: object, strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
        return strategy.flatmap(swap)

    return hook


def fuzz(operation: APIOperation, world: Seed, check: Callable[[Case], None], config: settings) -> list[str]:
    """Run ``check`` on every probe of ``operation``, then on generated positive and negative cases
    until the first failure (shrunk to a minimal one); what failed."""
    failures = []
    for probe in probe_cases(operation, world):
        try:
            check(probe)
        except Violation as exc:
            failures.append(f"{operation.label} (explicit probe): {exc}")

    @config
    @given(case=st.one_of([operation.as_strategy(generation_mode=mode) for mode in GenerationMode]))
    def run(case: Case) -> None:
        check(case)

    try:
        run()
    except Exception as exc:
        notes = [n for n in getattr(exc, "__notes__", []) if not n.startswith("Failing test case")]
        failures.append("\n".join([f"{operation.label} (generated): {type(exc).__name__}: {exc}", *notes]))
    return failures


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """Fuzzed host URIs (``qemu://<anything>/system``) must never reach a real libvirt, let alone
    another machine: only simulated ``fake://`` hosts may be registered here."""
    with live_server(database_url, tmp_path / "data", host_uri_schemes=["fake"]) as server:
        yield server


def test_api_fuzz(api: LiveServer) -> None:
    schema, known = load_schema(api)
    run = Run(api)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = [operation.label for operation in operations]
    config = fuzz_settings(len(operations))
    world, previous = None, None
    for operation in operations:
        # A fresh world after any operation that may write: what DELETE and PATCH did to the last one
        # is no matter, and the tables stay small, so the fingerprint stays cheap.
        if world is None or previous is None or previous.method.upper() != "GET":
            reset(api.db)
            world = seed(api)
            known.clear()
            known.update(known_values(world))
        run.failures += fuzz(operation, world, run.check, config)
        previous = operation
    print(f"\n{config.max_examples} generated examples per operation; " + run.summary())
    assert {"GET /healthz", "GET /readyz"} <= set(labels)
    assert sum(label.split(" ")[1].startswith("/v1/") for label in labels) >= 14, labels
    if run.failures:
        pytest.fail(f"{len(run.failures)} failure(s):\n\n" + "\n\n".join(run.failures), pytrace=False)


CREDENTIALS = {
    "no Authorization header": None,
    "a wrong bearer token": "Bearer not-the-token",
    "an empty bearer token": "Bearer ",
    "the token in another scheme": "Basic {token}",
    "the token without a scheme": "{token}",
}


def test_requests_without_valid_credentials_get_401(api: LiveServer) -> None:
    """Every /v1 operation, without valid credentials: a 401 problem, and no write."""
    world = seed(api)
    schema, _ = load_schema(api)
    path_values, bodies = well_formed(world)
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith("/v1/"):
            continue
        path = {param.name: path_values.get(param.name, "x") for param in operation.path_parameters}
        # Credentials are checked before the body is validated: {} will do where no body is known.
        body = bodies.get(operation.label, {} if operation.body else None)
        case = operation.Case(path_parameters=path, **({} if body is None else {"body": body}))
        for what, header in CREDENTIALS.items():
            headers = {} if header is None else {"Authorization": header.format(token=api.token)}
            wait_until_idle(api.db)
            before = fingerprint(api.db)
            for _ in range(5):  # failed logins are rate-limited per address: wait out a 429
                response = case.call(headers=headers, timeout=30)
                if response.status_code != 429:
                    break
                time.sleep(float((response.headers.get("retry-after") or ["1"])[0]))
            sent += 1
            context = f"{operation.label} with {what}"
            assert response.status_code == 401, f"{context}: {response.status_code} {response.text[:500]}"
            content_type = (response.headers.get("content-type") or [None])[0]
            assert not problem_violations(401, content_type, response.content), context
            challenge = (response.headers.get("www-authenticate") or [""])[0]
            assert challenge.startswith("Bearer"), f"{context}: WWW-Authenticate is {challenge!r}"
            assert not fingerprint_diff(before, fingerprint(api.db)), f"{context} wrote to the database"
    assert sent >= 14 * len(CREDENTIALS)
