"""Identity and access behaviour over real HTTP, on both backends: API tokens, role bindings,
the audit trail, rate limits, the body size limit and the failed-authentication counter.

Who may call which route is covered route by route in ``test_access_matrix.py``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa

from sovra.api.projects import ProjectCreate
from sovra.domain.identity import Identity, Role
from sovra.domain.labels import validate_labels
from sovra.store import audit
from sovra.store.database import Database
from sovra.store.schema import api_tokens, audit_records
from sovra.store.types import utcnow
from tests.support.live_server import LiveServer, live_server
from tests.support.principals import (
    PROBLEM,
    Principal,
    StaticVerifier,
    auth_failures,
    bearer,
    create_project,
    http_client,
    issue_token,
    store_pending_operation,
    store_project,
    store_token,
    token_principal,
    unique,
)

ISSUER = "https://idp.example/realms/sovra"
ALICE = Identity(f"oidc:{ISSUER}#alice", "Alice", groups=("devs",))
BOB = Identity(f"oidc:{ISSUER}#bob", "Bob")


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def _as(server: LiveServer, secret: str | None) -> httpx.Client:
    return http_client(server.url, secret)


def _get(server: LiveServer, path: str, headers: dict[str, str]) -> httpx.Response:
    with _as(server, None) as client:
        return client.get(path, headers=headers)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _token_row(db: Database, token_id: str) -> dict[str, Any]:
    with db.read() as conn:
        return dict(conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).mappings().one())


def _set_expiry(db: Database, token_id: str, when: datetime) -> None:
    with db.write() as conn:
        conn.execute(sa.update(api_tokens).where(api_tokens.c.id == token_id).values(expires_at=when))


def _audit(admin: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = admin.get("/v1/audit", params={"page_size": 1000, **params})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _settled(
    admin: httpx.Client,
    request_ids: AbstractSet[str] = frozenset(),
    at_least: int = 0,
    **params: Any,
) -> list[dict[str, Any]]:
    """The audit records once those of ``request_ids`` (and ``at_least`` many) are there.

    The middleware writes a call's record after the response has gone out, so a client that
    reads the trail right after a call may be a moment early.
    """
    deadline = time.monotonic() + 10
    while True:
        items = _audit(admin, **params)
        seen = {r["request_id"] for r in items}
        if (request_ids <= seen and len(items) >= at_least) or time.monotonic() > deadline:
            return items
        time.sleep(0.02)


def _by_request(admin: httpx.Client, request_id: str, at_least: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        mine = [r for r in _audit(admin) if r["request_id"] == request_id]
        if len(mine) >= at_least or time.monotonic() > deadline:
            return mine
        time.sleep(0.02)


def _wait_operation(client: httpx.Client, operation_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/operations/{operation_id}").json()
        if body["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"operation {operation_id} did not finish")


@pytest.fixture
def admin(api: LiveServer) -> Iterator[httpx.Client]:
    with _as(api, api.token) as client:
        yield client


# API tokens


def test_a_token_secret_is_shown_once_and_stored_only_as_its_sha256(
    api: LiveServer, admin: httpx.Client
) -> None:
    project = create_project(admin)
    created = admin.post(f"/v1/projects/{project}/tokens", json={"name": "ci", "role": "member"})
    assert created.status_code == 201, created.text
    token = created.json()
    secret = token["secret"]
    assert secret.startswith("sovra_") and len(secret) >= 40
    assert created.headers["location"] == f"/v1/tokens/{token['id']}"
    assert token["hint"] == secret[len("sovra_") : len("sovra_") + 6]
    assert (token["name"], token["role"], token["project_id"], token["created_by"]) == (
        "ci",
        "member",
        project,
        "bootstrap",
    )
    assert token["revoked_at"] is None and token["last_used_at"] is None
    # never again: not in either list
    for listing in (admin.get(f"/v1/projects/{project}/tokens"), admin.get("/v1/tokens")):
        assert listing.status_code == 200
        items = listing.json()["items"]
        assert token["id"] in {t["id"] for t in items}
        assert all("secret" not in t for t in items)
        assert secret[len("sovra_") :] not in listing.text
    # the store keeps the SHA-256 of the secret, and nothing else that holds it
    row = _token_row(api.db, token["id"])
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret[len("sovra_") :] in str(value) for value in row.values())
    assert "secret" not in row
    # and the secret is what authenticates
    whoami = _get(api, "/v1/whoami", bearer(secret))
    assert whoami.status_code == 200, whoami.text
    assert whoami.json() == {
        "principal": f"token:{token['id']}",
        "display_name": "token ci",
        "is_admin": False,
        "roles": {project: "member"},
        "token_id": token["id"],
    }
    revoked = admin.delete(f"/v1/tokens/{token['id']}")
    assert revoked.status_code == 200 and "secret" not in revoked.json()


def test_an_expired_token_is_refused(api: LiveServer, admin: httpx.Client) -> None:
    project = create_project(admin)
    token = issue_token(admin, project, "reader")
    _set_expiry(api.db, token["id"], utcnow() + timedelta(seconds=1))  # a one-second lifetime
    with _as(api, token["secret"]) as client:
        assert client.get(f"/v1/projects/{project}").status_code == 200
        time.sleep(1.1)
        refused = _problem(client.get(f"/v1/projects/{project}"), 401)
    assert "expired" in refused["detail"] and token["id"] in refused["detail"]
    assert refused["title"] == "Unauthenticated"


def test_a_revoked_token_is_refused_at_once(api: LiveServer, admin: httpx.Client) -> None:
    project = create_project(admin)
    token = issue_token(admin, project, "manager")
    with _as(api, token["secret"]) as client:
        assert client.get("/v1/whoami").status_code == 200
        revoked = admin.delete(f"/v1/tokens/{token['id']}")
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None
        refused = _problem(client.get("/v1/whoami"), 401)
        assert "revoked" in refused["detail"]
        # a revoked manager token can no longer do what a manager does, e.g. revoke others
        other = issue_token(admin, project, "reader")
        _problem(client.delete(f"/v1/tokens/{other['id']}"), 401)
    assert _token_row(api.db, other["id"])["revoked_at"] is None
    listed = {t["id"]: t for t in admin.get(f"/v1/projects/{project}/tokens").json()["items"]}
    assert listed[token["id"]]["revoked_at"] == revoked.json()["revoked_at"]
    again = admin.delete(f"/v1/tokens/{token['id']}")  # revoking twice keeps the first time
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_last_use_is_recorded(api: LiveServer, admin: httpx.Client) -> None:
    project = create_project(admin)
    token = issue_token(admin, project, "reader")
    assert _token_row(api.db, token["id"])["last_used_at"] is None
    before = utcnow()
    assert _get(api, "/v1/whoami", bearer(token["secret"])).status_code == 200
    after = utcnow()
    listed = {t["id"]: t for t in admin.get(f"/v1/projects/{project}/tokens").json()["items"]}
    last_used = _at(listed[token["id"]]["last_used_at"])
    assert before <= last_used <= after


def test_a_token_carries_at_most_its_creators_role(api: LiveServer, admin: httpx.Client) -> None:
    project = create_project(admin)
    reader, member, manager = (token_principal(admin, project, r, r) for r in ("reader", "member", "manager"))

    def create(who: Principal, role: str, path: str = f"/v1/projects/{project}/tokens") -> httpx.Response:
        with _as(api, who.secret) as client:
            return client.post(path, json={"name": unique(role), "role": role})

    tokens_before = len(admin.get(f"/v1/projects/{project}/tokens").json()["items"])
    assert "cannot grant manager" in _problem(create(member, "manager"), 403)["detail"]
    _problem(create(reader, "member"), 403)
    _problem(create(manager, "admin"), 403)
    _problem(create(manager, "manager", "/v1/tokens"), 403)  # global tokens are the admin's
    admin_in_project = admin.post(f"/v1/projects/{project}/tokens", json={"name": "x", "role": "admin"})
    assert "global role" in _problem(admin_in_project, 403)["detail"]
    assert len(admin.get(f"/v1/projects/{project}/tokens").json()["items"]) == tokens_before
    # at or below one's own role is fine, and the new token holds exactly that role
    for who, role in ((reader, "reader"), (member, "member"), (member, "reader"), (manager, "manager")):
        made = create(who, role)
        assert made.status_code == 201, made.text
        assert made.json()["created_by"] == who.principal
        whoami = _get(api, "/v1/whoami", bearer(made.json()["secret"])).json()
        assert whoami["roles"] == {project: role} and whoami["is_admin"] is False
    # a global admin token is an admin
    made = admin.post("/v1/tokens", json={"name": "automation", "role": "admin"})
    assert made.status_code == 201 and made.json()["project_id"] is None
    whoami = _get(api, "/v1/whoami", bearer(made.json()["secret"])).json()
    assert whoami["is_admin"] is True


def test_managers_see_every_token_of_the_project_members_only_their_own(
    api: LiveServer, admin: httpx.Client
) -> None:
    project, other = create_project(admin), create_project(admin)
    reader, member, manager = (token_principal(admin, project, r, r) for r in ("reader", "member", "manager"))
    elsewhere = issue_token(admin, other, "manager")
    with _as(api, member.secret) as as_member, _as(api, manager.secret) as as_manager:
        members_own = issue_token(as_member, project, "reader")
        managers_own = issue_token(as_manager, project, "reader")

        def ids(client: httpx.Client, path: str) -> set[str]:
            response = client.get(path)
            assert response.status_code == 200, response.text
            return {t["id"] for t in response.json()["items"]}

        assert ids(as_member, f"/v1/projects/{project}/tokens") == {members_own["id"]}
        assert ids(as_member, "/v1/tokens") == {members_own["id"]}
        everyone = {reader.token_id, member.token_id, manager.token_id, members_own["id"], managers_own["id"]}
        assert ids(as_manager, f"/v1/projects/{project}/tokens") == everyone
        assert elsewhere["id"] not in ids(as_manager, f"/v1/projects/{project}/tokens")
        assert ids(as_manager, "/v1/tokens") == {managers_own["id"]}
        with _as(api, reader.secret) as as_reader:
            assert ids(as_reader, f"/v1/projects/{project}/tokens") == set()
        # members revoke only their own tokens; managers any token of the project
        _problem(as_member.delete(f"/v1/tokens/{managers_own['id']}"), 403)
        assert as_member.delete(f"/v1/tokens/{members_own['id']}").status_code == 200
        assert as_manager.delete(f"/v1/tokens/{reader.token_id}").status_code == 200
        _problem(as_manager.delete(f"/v1/tokens/{elsewhere['id']}"), 404)
    assert _token_row(api.db, managers_own["id"])["revoked_at"] is None
    assert _token_row(api.db, elsewhere["id"])["revoked_at"] is None


def test_a_deleted_projects_tokens_are_revoked(api: LiveServer, admin: httpx.Client) -> None:
    project = create_project(admin)
    token = issue_token(admin, project, "manager")
    started = admin.delete(f"/v1/projects/{project}")
    assert started.status_code == 202, started.text
    assert _wait_operation(admin, started.json()["id"])["state"] == "SUCCEEDED"
    assert _token_row(api.db, token["id"])["revoked_at"] is not None
    refused = _problem(_get(api, "/v1/whoami", bearer(token["secret"])), 401)
    assert "revoked" in refused["detail"]


# Role bindings


@pytest.fixture
def oidc_api(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """An API whose OIDC verifier knows two people: alice (in group devs) and bob."""
    verifier = StaticVerifier({"alice-credential": ALICE, "bob-credential": BOB})
    with live_server(database_url, tmp_path / "oidc", workers=0, oidc=verifier) as server:
        yield server


def _member_path(project: str, subject: str) -> str:
    return f"/v1/projects/{project}/members/{quote(subject, safe='')}"


def test_role_bindings_round_trip_and_show_in_whoami(oidc_api: LiveServer) -> None:
    with _as(oidc_api, oidc_api.token) as admin:
        project, other = create_project(admin), create_project(admin)
        manager = token_principal(admin, project, "manager", "manager")
        member = token_principal(admin, project, "member", "member")
    alice = _as(oidc_api, "alice-credential")
    bob = _as(oidc_api, "bob-credential")
    as_manager = _as(oidc_api, manager.secret)
    with alice, bob, as_manager:
        me = alice.get("/v1/whoami").json()
        assert me == {
            "principal": ALICE.principal,
            "display_name": "Alice",
            "is_admin": False,
            "roles": {},
            "token_id": None,
        }
        _problem(alice.get(f"/v1/projects/{project}"), 404)

        put = as_manager.put(_member_path(project, ALICE.principal), json={"role": "member"})
        assert put.status_code == 200, put.text
        assert {k: put.json()[k] for k in ("project_id", "subject", "role", "created_by")} == {
            "project_id": project,
            "subject": ALICE.principal,
            "role": "member",
            "created_by": manager.principal,
        }
        listed = as_manager.get(f"/v1/projects/{project}/members").json()["items"]
        assert [(b["subject"], b["role"]) for b in listed] == [(ALICE.principal, "member")]
        assert alice.get("/v1/whoami").json()["roles"] == {project: "member"}
        assert alice.get(f"/v1/projects/{project}").status_code == 200
        assert [p["id"] for p in alice.get("/v1/projects").json()["items"]] == [project]
        _problem(alice.patch(f"/v1/projects/{project}", json={"labels": {"a": "b"}}), 403)
        _problem(alice.get(f"/v1/projects/{other}"), 404)

        # PUT replaces; a group binding adds up, the highest role wins
        assert (
            as_manager.put(_member_path(project, ALICE.principal), json={"role": "reader"}).status_code == 200
        )
        assert alice.get("/v1/whoami").json()["roles"] == {project: "reader"}
        assert (
            as_manager.put(_member_path(project, "group:devs"), json={"role": "manager"}).status_code == 200
        )
        listed = as_manager.get(f"/v1/projects/{project}/members").json()["items"]
        assert sorted((b["subject"], b["role"]) for b in listed) == [
            ("group:devs", "manager"),
            (ALICE.principal, "reader"),
        ]
        assert alice.get("/v1/whoami").json()["roles"] == {project: "manager"}
        assert alice.get(f"/v1/projects/{project}/members").status_code == 200
        assert bob.get("/v1/whoami").json()["roles"] == {}

        # removal takes effect on the next request
        assert as_manager.delete(_member_path(project, ALICE.principal)).status_code == 204
        assert alice.get("/v1/whoami").json()["roles"] == {project: "manager"}  # still via devs
        assert as_manager.delete(_member_path(project, "group:devs")).status_code == 204
        assert alice.get("/v1/whoami").json()["roles"] == {}
        _problem(alice.get(f"/v1/projects/{project}"), 404)
        assert as_manager.get(f"/v1/projects/{project}/members").json()["items"] == []
        _problem(as_manager.delete(_member_path(project, ALICE.principal)), 404)

        # refusals
        assert (
            "admin"
            in _problem(as_manager.put(_member_path(project, BOB.principal), json={"role": "admin"}), 403)[
                "detail"
            ]
        )
        problem = _problem(as_manager.put(_member_path(project, "bob"), json={"role": "reader"}), 400)
        assert problem["errors"][0]["field"] == "subject"
        _problem(as_manager.put(_member_path(other, BOB.principal), json={"role": "reader"}), 404)
        with _as(oidc_api, member.secret) as as_member:
            _problem(as_member.put(_member_path(project, BOB.principal), json={"role": "reader"}), 403)
        assert bob.get("/v1/whoami").json()["roles"] == {}


# The audit trail


def test_every_mutating_call_is_audited_whatever_its_outcome(api: LiveServer, admin: httpx.Client) -> None:
    project = create_project(admin)
    manager = token_principal(admin, project, "manager", "manager")
    reader = token_principal(admin, project, "reader", "reader")
    before = utcnow()

    def send(secret: str | None, method: str, path: str, request_id: str, **kw: Any) -> httpx.Response:
        headers = {**bearer(secret), "X-Request-ID": request_id}
        with _as(api, None) as client:
            return client.request(method, path, headers=headers, **kw)

    created = send(api.token, "POST", "/v1/projects", "req-create", json={"name": "audited"})
    made = created.json()["id"]
    token = send(
        api.token, "POST", f"/v1/projects/{project}/tokens", "req-token", json={"name": "t", "role": "reader"}
    )
    patched = send(
        manager.secret, "PATCH", f"/v1/projects/{project}", "req-patch", json={"labels": {"a": "b"}}
    )
    denied = send(
        reader.secret, "PATCH", f"/v1/projects/{project}", "req-denied", json={"labels": {"a": "c"}}
    )
    anonymous = send(None, "POST", "/v1/projects", "req-anonymous", json={"name": "nope"})
    wrong = send("sovra_wrong", "POST", "/v1/projects", "req-wrong", json={"name": "nope"})
    duplicate = send(api.token, "POST", "/v1/projects", "req-duplicate", json={"name": "audited"})
    malformed = send(api.token, "POST", "/v1/projects", "req-malformed", json={"nam": "x"})
    read = send(api.token, "GET", f"/v1/projects/{project}", "req-read")
    statuses = [
        r.status_code for r in (created, token, patched, denied, anonymous, wrong, duplicate, malformed)
    ]
    assert statuses == [201, 201, 200, 403, 401, 401, 409, 422] and read.status_code == 200
    after = utcnow()

    expected = {  # request id: (principal, project, action, kind, resource, result, status)
        "req-create": ("bootstrap", made, "create_project", "Project", made, "success", 201),
        "req-token": (
            "bootstrap",
            project,
            "create_project_token",
            "ApiToken",
            token.json()["id"],
            "success",
            201,
        ),
        "req-patch": (manager.principal, project, "update_project", "Project", project, "success", 200),
        "req-denied": (reader.principal, project, "update_project", "Project", project, "denied", 403),
        "req-anonymous": ("anonymous", None, "create_project", "Project", None, "denied", 401),
        "req-wrong": ("anonymous", None, "create_project", "Project", None, "denied", 401),
        "req-duplicate": ("bootstrap", None, "create_project", "Project", None, "failure", 409),
        "req-malformed": ("bootstrap", None, "create_project", "Project", None, "failure", 422),
    }
    records = _settled(admin, set(expected))
    for request_id, want in expected.items():
        mine = [r for r in records if r["request_id"] == request_id]
        assert len(mine) == 1, (request_id, mine)
        record = mine[0]
        got = tuple(
            record[k]
            for k in (
                "principal",
                "project_id",
                "action",
                "resource_kind",
                "resource_id",
                "result",
                "status_code",
            )
        )
        assert got == want, request_id
        assert record["source"] == "127.0.0.1"
        assert before <= _at(record["time"]) <= after
        assert record["details"]["method"] in ("POST", "PATCH")
    assert [r for r in records if r["request_id"] == "req-read"] == []  # reads are not audited


def test_refused_calls_are_recorded_against_the_project_they_aimed_at(
    api: LiveServer, admin: httpx.Client
) -> None:
    project = create_project(admin)
    reader = token_principal(admin, project, "reader", "reader")
    operation = store_pending_operation(api.db, project)
    victim = store_token(api.db, project, Role.READER)
    calls = [
        ("PATCH", f"/v1/projects/{project}", {"labels": {"a": "b"}}),
        ("POST", f"/v1/operations/{operation}:cancel", None),
        ("DELETE", f"/v1/tokens/{victim.token_id}", None),
        ("PUT", _member_path(project, "group:x"), {"role": "reader"}),
        ("DELETE", _member_path(project, "group:x"), None),
    ]
    with _as(api, reader.secret) as client:
        for index, (method, path, body) in enumerate(calls):
            headers = {"X-Request-ID": f"refused-{index}"}
            assert client.request(method, path, json=body, headers=headers).status_code == 403
    records = {r["request_id"]: r for r in _settled(admin, at_least=len(calls), principal=reader.principal)}
    assert {f"refused-{i}" for i in range(len(calls))} <= set(records)
    assert {(records[f"refused-{i}"]["action"], records[f"refused-{i}"]["project_id"]) for i in range(5)} == {
        (action, project)
        for action in ("update_project", "cancel_operation", "revoke_token", "put_member", "delete_member")
    }


def test_a_cancellation_is_recorded_with_the_operation_it_cancelled(
    api: LiveServer, admin: httpx.Client
) -> None:
    project = create_project(admin)
    operation = store_pending_operation(api.db, project)
    cancelled = admin.post(f"/v1/operations/{operation}:cancel", headers={"X-Request-ID": "req-cancel"})
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    [record] = _by_request(admin, "req-cancel")
    assert (record["action"], record["result"], record["project_id"]) == (
        "cancel_operation",
        "success",
        project,
    )
    assert (record["resource_kind"], record["resource_id"]) == ("Operation", operation)


def test_operation_steps_are_audited_with_the_requests_principal_and_id(
    api: LiveServer, admin: httpx.Client
) -> None:
    automation = admin.post("/v1/tokens", json={"name": "automation", "role": "admin"}).json()
    project = create_project(admin)
    with _as(api, automation["secret"]) as client:
        started = client.delete(f"/v1/projects/{project}", headers={"X-Request-ID": "req-teardown"})
        assert started.status_code == 202, started.text
        done = _wait_operation(client, started.json()["id"])
    assert done["state"] == "SUCCEEDED"
    principal = f"token:{automation['id']}"
    assert done["principal"] == principal
    records = {r["action"]: r for r in _by_request(admin, "req-teardown", at_least=3)}
    assert set(records) == {"delete_project", "project.delete:check-unused", "project.delete:teardown"}
    assert records["delete_project"]["principal"] == principal
    assert records["delete_project"]["result"] == "success"
    for step in ("check-unused", "teardown"):
        record = records[f"project.delete:{step}"]
        assert (record["principal"], record["project_id"], record["resource_id"], record["result"]) == (
            principal,
            project,
            project,
            "success",
        )
        assert record["resource_kind"] == "Project"
        assert record["source"].startswith("worker ")
        assert record["details"]["operation_id"] == done["id"]
    assert _at(records["project.delete:check-unused"]["time"]) <= _at(
        records["project.delete:teardown"]["time"]
    )


def test_audit_queries_filter_by_project_principal_resource_and_time_and_page(
    api: LiveServer, admin: httpx.Client
) -> None:
    project, other = create_project(admin), create_project(admin)
    manager = token_principal(admin, project, "manager", "manager")
    token = issue_token(admin, project, "reader")
    admin.patch(f"/v1/projects/{other}", json={"labels": {"x": "y"}})
    with _as(api, manager.secret) as client:
        for n in range(5):
            assert client.patch(f"/v1/projects/{project}", json={"labels": {"n": str(n)}}).status_code == 200

    by_manager = _settled(admin, at_least=5, principal=manager.principal)
    in_project = _settled(admin, at_least=7, project_id=project)
    assert {r["project_id"] for r in in_project} == {project}
    assert {"create_project", "create_project_token", "update_project"} <= {r["action"] for r in in_project}
    assert other not in {r["resource_id"] for r in in_project}

    assert [r["action"] for r in by_manager] == ["update_project"] * 5
    assert [r["details"]["path"] for r in by_manager] == [f"/v1/projects/{project}"] * 5
    ids = [r["id"] for r in by_manager]
    assert ids == sorted(ids, reverse=True)  # newest first

    [made] = _audit(admin, resource_id=token["id"])
    assert (made["action"], made["resource_kind"]) == ("create_project_token", "ApiToken")

    # since is inclusive, until exclusive
    times = [r["time"] for r in by_manager]  # newest first
    since = _audit(admin, principal=manager.principal, since=times[2])
    assert [r["id"] for r in since] == ids[:3]
    until = _audit(admin, principal=manager.principal, until=times[2])
    assert [r["id"] for r in until] == ids[3:]
    window = _audit(admin, principal=manager.principal, since=times[3], until=times[1])
    assert [r["id"] for r in window] == ids[2:4]
    assert _audit(admin, principal=manager.principal, since=_next_second(times[0])) == []

    # pages of two, in order, without gaps or repeats
    pages, token_ = [], None
    while True:
        params: dict[str, Any] = {"principal": manager.principal, "page_size": 2}
        if token_:
            params["page_token"] = token_
        page = admin.get("/v1/audit", params=params).json()
        pages.append([r["id"] for r in page["items"]])
        token_ = page["next_page_token"]
        if token_ is None:
            break
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    # a page token belongs to its query
    first = admin.get("/v1/audit", params={"principal": manager.principal, "page_size": 2}).json()
    moved = admin.get("/v1/audit", params={"project_id": other, "page_token": first["next_page_token"]})
    _problem(moved, 400)


def _next_second(text: str) -> str:
    return (_at(text) + timedelta(seconds=1)).isoformat()


def test_a_tenant_sees_only_its_projects_audit_records(api: LiveServer, admin: httpx.Client) -> None:
    project, other = create_project(admin), create_project(admin)
    reader = token_principal(admin, project, "reader", "reader")
    outsider = token_principal(admin, other, "manager", "outsider")
    admin.patch(f"/v1/projects/{project}", json={"labels": {"by": "admin"}})
    with _as(api, outsider.secret) as client:
        assert client.patch(f"/v1/projects/{other}", json={"labels": {"by": "outsider"}}).status_code == 200
    assert admin.post("/v1/tokens", json={"name": "global", "role": "admin"}).status_code == 201

    everything = _settled(admin, at_least=7)  # 2 projects, 3 tokens, 2 edits
    assert None in {r["project_id"] for r in everything}  # global records exist: admins see them
    assert {project, other} <= {r["project_id"] for r in everything}
    with _as(api, reader.secret) as client:
        seen = _audit(client)
        assert seen and {r["project_id"] for r in seen} == {project}
        # including what others did in the project, e.g. the admin's edit
        assert ("bootstrap", "update_project") in {(r["principal"], r["action"]) for r in seen}
        assert _audit(client, project_id=other) == []
        assert _audit(client, principal=outsider.principal) == []
    assert {r["id"] for r in seen} == {r["id"] for r in everything if r["project_id"] == project}


def test_the_audit_table_rejects_update_and_delete_in_sql(db: Database) -> None:
    with db.write() as conn:
        audit.record(conn, principal="someone", action="create_project", result="success")
    attempts: list[sa.Executable] = [
        sa.update(audit_records).values(result="failure"),
        sa.update(audit_records).where(audit_records.c.principal == "someone").values(principal="nobody"),
        sa.delete(audit_records),
        sa.text("DELETE FROM audit_records WHERE principal = 'someone'"),
    ]
    for statement in attempts:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), db.write() as conn:
            conn.execute(statement)
    with db.read() as conn:
        rows = conn.execute(sa.select(audit_records.c.principal, audit_records.c.result)).all()
    assert [tuple(r) for r in rows] == [("someone", "success")]
    with db.write() as conn:  # appending still works
        audit.record(conn, principal="someone", action="update_project", result="denied")
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_records)).scalar_one() == 2


# Limits


def test_the_rate_limit_is_per_principal_with_retry_after(database_url: str, tmp_path: Path) -> None:
    with live_server(
        database_url, tmp_path / "limited", workers=0, rate_limit_per_second=1, rate_limit_burst=3
    ) as server:
        project = store_project(server.db)  # set up through the store: no API budget spent
        first, second = (
            store_token(server.db, project, Role.READER),
            store_token(server.db, project, Role.READER),
        )
        limited_before = _rate_limited_total(server)
        with _as(server, first.secret) as client, _as(server, second.secret) as neighbour:
            assert [client.get("/v1/whoami").status_code for _ in range(3)] == [200, 200, 200]
            limited = client.get("/v1/whoami")
            body = _problem(limited, 429)
            assert body["title"] == "Too many requests" and "retry after" in body["detail"]
            retry_after = int(limited.headers["retry-after"])
            assert 1 <= retry_after <= 2 and body["retry_after"] == retry_after
            # a mutating call over the limit is refused before anything else, and audited
            patch = client.patch(
                f"/v1/projects/{project}", json={"labels": {}}, headers={"X-Request-ID": "rl"}
            )
            assert patch.status_code == 429 and "retry-after" in patch.headers
            # other principals have buckets of their own
            assert [neighbour.get("/v1/whoami").status_code for _ in range(3)] == [200, 200, 200]
            with _as(server, server.token) as admin:
                assert admin.get("/v1/whoami").status_code == 200
                [record] = _by_request(admin, "rl")
            assert (record["principal"], record["result"], record["status_code"]) == (
                first.principal,
                "denied",
                429,
            )
            assert _rate_limited_total(server) - limited_before == 2
            time.sleep(retry_after)
            assert client.get("/v1/whoami").status_code == 200  # refilled


def _rate_limited_total(server: LiveServer) -> float:
    text = _get(server, "/metrics", {}).text
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith("sovra_rate_limited_total ")]
    return float(value)


def _large_valid_project() -> dict[str, Any]:
    body = {
        "name": "large",
        "labels": {f"key{n}": "v" * 60 for n in range(12)},
        "spec": {"description": "d" * 1000},
    }
    validate_labels(ProjectCreate.model_validate(body).labels)  # valid: only its size is wrong
    return body


@pytest.fixture
def small_body_api(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(database_url, tmp_path / "small", workers=0, max_body_bytes=1024) as server:
        yield server


def test_a_body_over_the_limit_is_refused_with_413_and_writes_nothing(small_body_api: LiveServer) -> None:
    body = _large_valid_project()
    assert len(json.dumps(body)) > 1024
    with _as(small_body_api, small_body_api.token) as admin:
        assert admin.post("/v1/projects", json={"name": "small"}).status_code == 201  # the limit is no lower
        refused = _problem(admin.post("/v1/projects", json=body, headers={"X-Request-ID": "req-large"}), 413)
        assert refused["title"] == "Payload too large" and "1024 bytes" in refused["detail"]
        assert [p["name"] for p in admin.get("/v1/projects").json()["items"]] == ["small"]
        [record] = _by_request(admin, "req-large")
        assert (record["result"], record["status_code"]) == ("failure", 413)


def test_a_streamed_body_over_the_limit_is_refused_with_413_too(small_body_api: LiveServer) -> None:
    payload = json.dumps(_large_valid_project()).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield payload[:512]
        yield payload[512:]

    with _as(small_body_api, small_body_api.token) as admin:
        response = admin.post("/v1/projects", content=chunks(), headers={"content-type": "application/json"})
        assert admin.get("/v1/projects").json()["items"] == []
    _problem(response, 413)


def test_refused_credentials_are_counted_by_reason(api: LiveServer, admin: httpx.Client) -> None:
    project = create_project(admin)
    expired, revoked = issue_token(admin, project, "reader"), issue_token(admin, project, "reader")
    _set_expiry(api.db, expired["id"], utcnow() - timedelta(seconds=1))
    assert admin.delete(f"/v1/tokens/{revoked['id']}").status_code == 200
    before = auth_failures(api.url)
    attempts = {
        "missing": [{}, {"Authorization": "Basic YTpi"}, {"Authorization": "Token abc"}],
        "invalid": [bearer("not-a-token"), bearer("sovra_" + "x" * 43)],
        "expired": [bearer(expired["secret"])],
        "revoked": [bearer(revoked["secret"]), bearer(revoked["secret"])],
    }
    for headers in (h for group in attempts.values() for h in group):
        _problem(_get(api, "/v1/projects", headers), 401)
    after = auth_failures(api.url)
    assert {reason: after.get(reason, 0) - before.get(reason, 0) for reason in attempts} == {
        reason: len(group) for reason, group in attempts.items()
    }
