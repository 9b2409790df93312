"""The REST API over real HTTP, on both backends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live_server import LiveServer, live_server

PROBLEM = "application/problem+json"


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert (
        body["status"] == status and body["title"] and body["detail"] and body["type"].startswith("https://")
    )
    return body


def _fields(problem: dict[str, Any]) -> list[str]:
    return [e["field"] for e in problem["errors"]]


def _create(client: httpx.Client, name: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/projects", json={"name": name, **extra})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_operation(client: httpx.Client, operation_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/operations/{operation_id}").json()
        if body["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"operation {operation_id} did not finish")


@pytest.fixture
def client(api: LiveServer) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c


@pytest.fixture
def idle_api(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """An API with no workers: operations stay PENDING until the test says otherwise."""
    with live_server(database_url, tmp_path / "idle", workers=0) as server:
        yield server


def test_authentication_is_required(api: LiveServer) -> None:
    missing = httpx.get(f"{api.url}/v1/projects")
    body = _problem(missing, 401)
    assert "Bearer" in body["detail"] and missing.headers["www-authenticate"].startswith("Bearer")
    _problem(httpx.get(f"{api.url}/v1/projects", headers={"Authorization": "Bearer nope"}), 401)
    _problem(httpx.get(f"{api.url}/v1/projects", headers={"Authorization": "Basic abc"}), 401)


def test_create_read_with_etag_and_location(client: httpx.Client) -> None:
    response = client.post(
        "/v1/projects",
        json={"name": "web", "labels": {"env": "prod"}, "spec": {"description": "the web team"}},
    )
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/v1/projects/{body['id']}"
    assert response.headers["etag"] == '"1"'
    assert (body["name"], body["spec"], body["status"]["state"], body["generation"]) == (
        "web",
        {"description": "the web team", "require_image_signature": False},
        "ACTIVE",
        1,
    )
    read = client.get(f"/v1/projects/{body['id']}")
    assert read.status_code == 200 and read.json() == body and read.headers["etag"] == '"1"'
    status = body["status"]
    assert status["observed_generation"] == 1
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("Ready", "True", "Applied")
    ]


def test_request_id_is_echoed_or_made(client: httpx.Client) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 36


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "bad name!"}, 400, "name"),
        ({"name": "ok", "labels": {"-x": "y"}}, 400, "labels.-x"),
        ({"name": "ok", "labels": {"x": "bad value"}}, 400, "labels.x"),
        ({"name": "ok", "surprise": 1}, 422, "surprise"),
        ({"name": "ok", "spec": {"description": 5}}, 422, "spec.description"),
        ({"name": ""}, 422, "name"),
        ({}, 422, "name"),
    ],
)
def test_malformed_creates_name_the_field_and_write_nothing(
    client: httpx.Client, body: dict[str, Any], status: int, field: str
) -> None:
    problem = _problem(client.post("/v1/projects", json=body), status)
    assert field in _fields(problem), problem
    assert client.get("/v1/projects").json()["items"] == []


def test_not_json_is_a_422(client: httpx.Client) -> None:
    response = client.post("/v1/projects", content=b"{not json", headers={"content-type": "application/json"})
    _problem(response, 422)


def test_duplicate_names_conflict(client: httpx.Client) -> None:
    _create(client, "dup")
    problem = _problem(client.post("/v1/projects", json={"name": "dup"}), 409)
    assert "already exists" in problem["detail"] and _fields(problem) == ["name"]


def test_unknown_resources_and_routes_are_404_problems(client: httpx.Client) -> None:
    _problem(client.get("/v1/projects/01a2061c-844d-7e94-a0d3-426b2cf400de"), 404)
    _problem(client.get("/v1/projects/not-an-id"), 404)
    _problem(client.get("/v1/operations/nope"), 404)
    assert "openapi" in _problem(client.get("/v1/nothing-here"), 404)["detail"]
    _problem(client.put("/v1/projects"), 405)


def test_patch_honours_if_match(client: httpx.Client) -> None:
    project = _create(client, "p1")
    url = f"/v1/projects/{project['id']}"
    updated = client.patch(url, json={"spec": {"description": "new"}}, headers={"If-Match": '"1"'})
    assert updated.status_code == 200, updated.text
    assert updated.headers["etag"] == '"2"' and updated.json()["generation"] == 2
    assert updated.json()["status"]["observed_generation"] == 2
    stale = _problem(client.patch(url, json={"name": "p2"}, headers={"If-Match": '"1"'}), 412)
    assert "version 2, not 1" in stale["detail"]
    assert client.get(url).json()["name"] == "p1"  # the stale write changed nothing
    assert "header:If-Match" in _fields(
        _problem(client.patch(url, json={}, headers={"If-Match": "junk"}), 400)
    )
    relabelled = client.patch(url, json={"labels": {"team": "a"}}, headers={"If-Match": 'W/"2"'})
    assert relabelled.json()["labels"] == {"team": "a"} and relabelled.json()["generation"] == 2


def test_list_pages_and_selects(client: httpx.Client) -> None:
    for i in range(7):
        _create(client, f"p{i}", labels={"parity": "even" if i % 2 == 0 else "odd"})
    first = client.get("/v1/projects", params={"page_size": 3}).json()
    second = client.get(
        "/v1/projects", params={"page_size": 3, "page_token": first["next_page_token"]}
    ).json()
    third = client.get(
        "/v1/projects", params={"page_size": 3, "page_token": second["next_page_token"]}
    ).json()
    names = [p["name"] for p in first["items"] + second["items"] + third["items"]]
    assert names == [f"p{i}" for i in range(7)] and third["next_page_token"] is None
    odd = client.get("/v1/projects", params={"label_selector": "parity in (odd)"}).json()["items"]
    assert [p["name"] for p in odd] == ["p1", "p3", "p5"]
    bad = _problem(client.get("/v1/projects", params={"label_selector": "parity in ("}), 400)
    assert _fields(bad) == ["label_selector"]
    _problem(client.get("/v1/projects", params={"page_token": "xyz"}), 400)
    _problem(client.get("/v1/projects", params={"page_size": 0}), 422)


def test_delete_runs_as_an_operation_with_an_audit_trail(client: httpx.Client) -> None:
    project = _create(client, "doomed")
    response = client.delete(f"/v1/projects/{project['id']}")
    assert response.status_code == 202, response.text
    operation = response.json()
    assert response.headers["location"] == f"/v1/operations/{operation['id']}"
    assert (operation["verb"], operation["target_id"]) == ("project.delete", project["id"])
    done = _wait_operation(client, operation["id"])
    assert done["state"] == "SUCCEEDED" and done["progress"] == 100
    assert [(s["name"], s["state"]) for s in done["steps"]] == [
        ("check-unused", "SUCCEEDED"),
        ("teardown", "SUCCEEDED"),
    ]
    assert all(s["started_at"] and s["finished_at"] and s["worker"] for s in done["steps"])
    _problem(client.get(f"/v1/projects/{project['id']}"), 404)
    listed = client.get("/v1/operations", params={"target_id": project["id"]}).json()["items"]
    assert [o["id"] for o in listed] == [operation["id"]]


def test_delete_is_idempotent_by_request_id_and_exclusive(idle_api: LiveServer) -> None:
    with idle_api.client() as client:
        project = _create(client, "busy")
        url = f"/v1/projects/{project['id']}"
        first = client.delete(url, params={"request_id": "req-1"})
        again = client.delete(url, params={"request_id": "req-1"})
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        status = client.get(url).json()["status"]
        assert (status["state"], status["operation_id"]) == (
            "ACTIVE",
            first.json()["id"],
        )
        conflict = _problem(client.delete(url), 409)
        assert conflict["blocking_operation"] == first.json()["id"]
        assert first.json()["id"] in conflict["detail"]
        cancelled = client.post(f"/v1/operations/{first.json()['id']}:cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
        assert (
            "already ended"
            in _problem(client.post(f"/v1/operations/{first.json()['id']}:cancel"), 409)["detail"]
        )
        stale = _problem(client.delete(url, headers={"If-Match": '"1"'}), 412)
        assert "changed since you read it" in stale["detail"]


def test_graph_routes_and_blocked_deletion(client: httpx.Client) -> None:
    a, b, c = (_create(client, n)["id"] for n in ("a", "b", "c"))
    for source, kind, target in ((a, "owns", b), (c, "uses", b)):
        response = client.post("/v1/edges", json={"source_id": source, "target_id": target, "type": kind})
        assert response.status_code == 201, response.text
    dependents = client.get(f"/v1/resources/{a}/dependents").json()["items"]
    assert [(d["id"], d["depth"], d["via"]) for d in dependents] == [(b, 1, "owns"), (c, 2, "uses")]
    shallow = client.get(f"/v1/resources/{a}/dependents", params={"depth": 1}).json()["items"]
    assert [d["id"] for d in shallow] == [b]
    dependencies = client.get(f"/v1/resources/{c}/dependencies").json()["items"]
    assert [(d["id"], d["depth"]) for d in dependencies] == [(b, 1), (a, 2)]
    order = client.get(f"/v1/projects/{a}/teardown-order").json()["items"]
    assert [o["id"] for o in order] == [b, a]
    edges = client.get(f"/v1/resources/{b}/edges").json()["items"]
    assert {(e["source_id"], e["type"]) for e in edges} == {(a, "owns"), (c, "uses")}
    # c uses b, which a owns: a cannot go while c lives, and the refusal writes nothing
    blocked = _problem(client.delete(f"/v1/projects/{a}"), 409)
    assert [d["id"] for d in blocked["dependents"]] == [c] and "c" in blocked["detail"]
    assert client.get("/v1/operations").json()["items"] == []
    cycle = _problem(client.post("/v1/edges", json={"source_id": b, "target_id": c, "type": "uses"}), 409)
    assert "cycle" in cycle["detail"]
    _problem(client.post("/v1/edges", json={"source_id": a, "target_id": b, "type": "likes"}), 422)
    assert client.delete(f"/v1/edges/{c}/uses/{b}").status_code == 204
    _problem(client.delete(f"/v1/edges/{c}/uses/{b}"), 404)
    done = _wait_operation(client, client.delete(f"/v1/projects/{a}").json()["id"])
    assert done["state"] == "SUCCEEDED" and done["result"]["deleted"] == [b, a]
    _problem(client.get(f"/v1/projects/{b}"), 404)
    assert client.get(f"/v1/projects/{c}").status_code == 200


def test_health_readiness_and_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}
    project = _create(client, "m")
    client.get(f"/v1/projects/{project['id']}")
    _wait_operation(client, client.delete(f"/v1/projects/{project['id']}").json()["id"])
    text = httpx.get(f"{client.base_url}/metrics").text
    assert (
        'sovra_api_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/projects/{project_id}",status="200"}'
        in text
    )
    assert 'sovra_operations{state="SUCCEEDED",verb="project.delete"} 1.0' in text


def test_openapi_is_served(client: httpx.Client) -> None:
    schema = httpx.get(f"{client.base_url}/openapi.json").json()
    assert {
        "/v1/projects",
        "/v1/operations/{operation_id}:cancel",
        "/v1/resources/{resource_id}/dependents",
    } <= set(schema["paths"])


def test_a_repeated_delete_returns_the_same_operation_after_the_project_is_gone(client: httpx.Client) -> None:
    project = _create(client, "gone")
    url = f"/v1/projects/{project['id']}"
    first = client.delete(url, params={"request_id": "once"}).json()
    assert _wait_operation(client, first["id"])["state"] == "SUCCEEDED"
    _problem(client.get(url), 404)
    again = client.delete(url, params={"request_id": "once"})
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    _problem(client.delete(url, params={"request_id": "another"}), 404)


def test_a_use_that_appears_after_the_request_still_blocks_and_keeps_the_project(
    idle_api: LiveServer,
) -> None:
    from sovra.operations.engine import Worker
    from sovra.operations.registry import default_registry

    with idle_api.client() as client:
        project = _create(client, "target")
        other = _create(client, "other")
        operation = client.delete(f"/v1/projects/{project['id']}").json()
        edge = {"source_id": other["id"], "target_id": project["id"], "type": "uses"}
        assert client.post("/v1/edges", json=edge).status_code == 201
        Worker(idle_api.db, default_registry(), idle_api.settings).run_once()
        done = client.get(f"/v1/operations/{operation['id']}").json()
        assert done["state"] == "FAILED" and done["error"]["code"] == "IN_USE"
        assert other["id"] in done["error"]["message"]
        kept = client.get(f"/v1/projects/{project['id']}").json()
        assert (kept["status"]["state"], kept["status"]["operation_id"]) == ("ACTIVE", None)


def test_audit_times_without_a_zone_are_utc_and_creations_carry_their_project(client: httpx.Client) -> None:
    project = _create(client, "audited")
    naive = client.get("/v1/audit", params={"since": "2000-01-01T00:00:00", "project_id": project["id"]})
    assert naive.status_code == 200, naive.text
    created = [r for r in naive.json()["items"] if r["action"] == "create_project"]
    assert [(r["resource_id"], r["project_id"]) for r in created] == [(project["id"], project["id"])]


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/v1/projects", {"json": {"name": "p3\n"}}),
        ("POST", "/v1/projects", {"json": {"name": "ok", "spec": {"description": "nul\u0000"}}}),
        ("GET", "/v1/operations", {"params": {"verb": "nul\x00"}}),
        ("GET", "/v1/projects", {"params": {"name": "nul\x00"}}),
        ("POST", "/v1/edges", {"json": {"source_id": "nul\u0000", "target_id": "x", "type": "uses"}}),
    ],
)
def test_control_characters_are_a_client_error_on_every_backend(
    client: httpx.Client, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = client.request(method, path, **kwargs)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert client.get("/v1/projects").json()["items"] == []
