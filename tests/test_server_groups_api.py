"""Server groups through the real API, on SQLite and PostgreSQL: members are the servers with a
``uses`` edge to the group, they block its deletion, the policy never changes, and tenants see only
their own groups."""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa

from sovra.domain.edges import EdgeType
from sovra.domain.identity import Role
from sovra.domain.server_group import SERVER_GROUP_KIND
from sovra.store.database import Database
from sovra.store.schema import resources
from tests.support.live_server import LiveServer
from tests.support.principals import (
    PROBLEM,
    create_project,
    http_client,
    store_edge,
    store_resource,
    store_token,
)


def _create(client: httpx.Client, project_id: str, name: str, **body: Any) -> httpx.Response:
    return client.post(f"/v1/projects/{project_id}/server-groups", json={"name": name, **body})


def _group(client: httpx.Client, project_id: str, name: str, policy: str = "anti-affinity") -> dict[str, Any]:
    response = _create(client, project_id, name, spec={"policy": policy})
    assert response.status_code == 201, response.text
    group: dict[str, Any] = response.json()
    return group


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    return body


def _group_rows(db: Database) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(sa.select(resources).where(resources.c.kind == SERVER_GROUP_KIND)).mappings()
        return [dict(r) for r in rows]


def test_create_show_and_refuse_what_is_not_a_group(api: LiveServer) -> None:
    with http_client(api.url, api.token) as client:
        project = create_project(client, "groups")
        created = _create(client, project, "web", spec={"policy": "anti-affinity"}, labels={"tier": "web"})
        assert created.status_code == 201, created.text
        group = created.json()
        assert created.headers["location"] == f"/v1/server-groups/{group['id']}"
        assert group["spec"] == {"policy": "anti-affinity"} and group["members"] == []
        assert group["labels"] == {"tier": "web"} and group["project_id"] == project
        shown = client.get(f"/v1/server-groups/{group['id']}")
        assert shown.json() == group and shown.headers["etag"] == '"1"'
        assert _group(client, project, "db", "affinity")["spec"]["policy"] == "affinity"

        bad_policy = _problem(_create(client, project, "x", spec={"policy": "soft-affinity"}), 422)
        assert bad_policy["errors"][0]["field"] == "spec.policy"
        no_policy = _problem(_create(client, project, "x", spec={}), 422)
        assert no_policy["errors"][0]["field"] == "spec.policy"
        assert _problem(_create(client, project, "x"), 422)["errors"][0]["field"] == "spec"
        bad_name = _problem(_create(client, project, "no spaces", spec={"policy": "affinity"}), 400)
        assert bad_name["errors"][0]["field"] == "name"
        taken = _problem(_create(client, project, "web", spec={"policy": "affinity"}), 409)
        assert "named 'web' already exists" in taken["detail"]
        not_a_group = _problem(client.get(f"/v1/server-groups/{project}"), 404)
        assert "ServerGroup" in not_a_group["detail"]
    assert sorted(r["name"] for r in _group_rows(api.db)) == ["db", "web"]


def test_members_are_listed_and_block_deletion(api: LiveServer) -> None:
    with http_client(api.url, api.token) as client:
        project = create_project(client, "members")
        group = _group(client, project, "spread")
        web1, web2 = (store_resource(api.db, project, kind="Server") for _ in range(2))
        unrelated = store_resource(api.db, project)
        store_edge(api.db, web1, EdgeType.USES, group["id"])
        store_edge(api.db, web2, EdgeType.USES, group["id"])
        store_edge(api.db, unrelated, EdgeType.RUNS_ON, group["id"])  # not a member: only uses counts

        shown = client.get(f"/v1/server-groups/{group['id']}").json()
        assert [m["id"] for m in shown["members"]] == [web1, web2]
        assert {m["kind"] for m in shown["members"]} == {"Server"}
        listed = client.get("/v1/server-groups").json()["items"]
        assert [m["id"] for m in listed[0]["members"]] == [web1, web2]

        refused = _problem(client.delete(f"/v1/server-groups/{group['id']}"), 409)
        assert (
            "still has 2 member(s)" in refused["detail"] and "delete those servers first" in refused["detail"]
        )
        assert [d["id"] for d in refused["dependents"]] == [web1, web2]
        assert len(_group_rows(api.db)) == 1

        with api.db.write() as conn:
            conn.execute(sa.delete(resources).where(resources.c.id.in_([web1, web2])))
        stale = _problem(client.delete(f"/v1/server-groups/{group['id']}", headers={"If-Match": '"7"'}), 412)
        assert stale["current_version"] == 1
        assert (
            client.delete(f"/v1/server-groups/{group['id']}", headers={"If-Match": '"1"'}).status_code == 204
        )
        _problem(client.get(f"/v1/server-groups/{group['id']}"), 404)
    assert _group_rows(api.db) == []


def test_the_policy_is_fixed_and_labels_change(api: LiveServer) -> None:
    with http_client(api.url, api.token) as client:
        project = create_project(client, "fixed")
        group = _group(client, project, "pair", "affinity")
        url = f"/v1/server-groups/{group['id']}"
        refused = _problem(client.patch(url, json={"spec": {"policy": "anti-affinity"}}), 409)
        assert "policy affinity, which cannot change" in refused["detail"]
        assert refused["errors"][0]["field"] == "spec.policy"
        assert client.get(url).json() == group  # nothing changed, not even the version

        same = client.patch(url, json={"spec": {"policy": "affinity"}, "labels": {"env": "prod"}})
        assert same.status_code == 200, same.text
        assert same.json()["labels"] == {"env": "prod"} and same.json()["version"] == 2
        assert same.headers["etag"] == '"2"'
        stale = _problem(client.patch(url, json={"labels": {}}, headers={"If-Match": '"1"'}), 412)
        assert stale["current_version"] == 2
        bad_label = _problem(client.patch(url, json={"labels": {"env": "no spaces"}}), 400)
        assert bad_label["errors"][0]["field"] == "labels.env"
        selected = client.get("/v1/server-groups", params={"label_selector": "env=prod"}).json()["items"]
        assert [g["id"] for g in selected] == [group["id"]]
        assert client.get(url).json()["version"] == 2


def test_tenants_see_and_change_only_their_own_groups(api: LiveServer) -> None:
    with http_client(api.url, api.token) as admin:
        a, b = create_project(admin, "tenant-a"), create_project(admin, "tenant-b")
    member_a = store_token(api.db, a, Role.MEMBER)
    reader_a = store_token(api.db, a, Role.READER)
    member_b = store_token(api.db, b, Role.MEMBER)
    with (
        http_client(api.url, member_a.secret) as ma,
        http_client(api.url, reader_a.secret) as ra,
        http_client(api.url, member_b.secret) as mb,
    ):
        ours = [_group(ma, a, f"a{i}") for i in range(3)]
        theirs = _group(mb, b, "b0")
        _problem(_create(ra, a, "reader", spec={"policy": "affinity"}), 403)
        _problem(_create(mb, a, "intruder", spec={"policy": "affinity"}), 404)

        first = ra.get("/v1/server-groups", params={"page_size": 2}).json()
        second = ra.get("/v1/server-groups", params={"page_size": 2, "page_token": first["next_page_token"]})
        assert [g["id"] for g in first["items"] + second.json()["items"]] == [g["id"] for g in ours]
        assert [g["id"] for g in mb.get("/v1/server-groups").json()["items"]] == [theirs["id"]]
        assert mb.get("/v1/server-groups", params={"project_id": a}).json()["items"] == []
        named = ra.get("/v1/server-groups", params={"name": "a2"}).json()["items"]
        assert [g["id"] for g in named] == [ours[2]["id"]]

        url = f"/v1/server-groups/{ours[0]['id']}"
        for method in ("GET", "PATCH", "DELETE"):
            _problem(mb.request(method, url, json={"labels": {}} if method == "PATCH" else None), 404)
        _problem(ra.patch(url, json={"labels": {"x": "y"}}), 403)
        _problem(ra.delete(url), 403)
        assert ra.get(url).status_code == 200
        assert ma.delete(url).status_code == 204
    assert len(_group_rows(api.db)) == 3
