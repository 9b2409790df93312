"""Retention and deprecation: the plan, applying it, the servers it affects, and bytes collected
only when nothing uses them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

from sovra.domain.edges import Edge, EdgeType
from sovra.store import graph
from sovra.store import resources as resource_store
from tests.support.live_server import LiveServer
from tests.test_images_api import METADATA, _project, _upload, _wait


def _version(
    client: httpx.Client, image_id: str, version: str, disk: Path, **metadata: Any
) -> dict[str, Any]:
    body = {"version": version, "metadata": {**METADATA, **metadata}, "boot_test": {"enabled": False}}
    created = client.post(f"/v1/images/{image_id}/versions", json=body)
    assert created.status_code == 201, created.text
    done = _wait(client, _upload(client, created.json(), disk).json()["id"])
    assert done["state"] == "SUCCEEDED", done["error"]
    result: dict[str, Any] = created.json()
    return result


def _disk(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(64 * 1024))
    return path


def _blob_files(api: LiveServer) -> set[str]:
    return {p.name for p in (api.settings.resolved_blob_dir / "sha256").rglob("*") if p.is_file()}


def test_retention_deprecates_retires_and_collects(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        project = _project(client)
        image = client.post(
            f"/v1/projects/{project}/images",
            json={"name": "Debian 12", "spec": {"retention": {"keep_last": 2}}},
        ).json()
        made = {
            name: _version(client, image["id"], name, _disk(tmp_path, name), image_build_date=date, **extra)
            for name, date, extra in (
                ("v1", "2026-01-01", {"uuid_validity": "2026-02-01"}),  # its validity has passed
                ("v2", "2026-02-01", {}),
                ("v3", "2026-03-01", {}),
                ("v4", "2026-04-01", {}),
                ("v5", "2026-05-01", {"provided_until": "2026-06-01"}),  # no longer provided
            )
        }
        # a server still uses v2: the plan says so, and v2's bytes must survive
        with api.db.write() as conn:
            server = resource_store.create(
                conn, kind="Server", name="web", project_id=project, labels={}, spec={}, state="RUNNING"
            )
            graph.add(conn, Edge(source_id=server.id, target_id=made["v2"]["id"], type=EdgeType.USES))
        plan = client.get(f"/v1/images/{image['id']}/lifecycle").json()
        actions = {
            a["version"]: (a["target"], a["reason"], [s["name"] for s in a["affected_servers"]])
            for a in plan["actions"]
        }
        assert {k: v[0] for k, v in actions.items()} == {
            "v1": "retired",
            "v5": "deprecated",
            "v2": "deprecated",
        }
        assert "uuid_validity" in actions["v1"][1] and "provided_until" in actions["v5"][1]
        assert "keeps its 2 newest" in actions["v2"][1] and actions["v2"][2] == ["web"]
        assert plan["hidden"] == [made["v3"]["id"]]  # v4 is the newest active one

        before = _blob_files(api)
        applied = client.post(f"/v1/images/{image['id']}/lifecycle:apply").json()
        assert len(applied["actions"]) == 3
        states = {
            v["spec"]["version"]: (v["state"], v["hidden"])
            for v in client.get(f"/v1/images/{image['id']}/versions").json()["items"]
        }
        assert states == {
            "v1": ("retired", False),
            "v2": ("deprecated", False),
            "v3": ("active", True),
            "v4": ("active", False),
            "v5": ("deprecated", False),
        }
        shown = client.get(f"/v1/images/{image['id']}/versions", params={"show_hidden": False}).json()[
            "items"
        ]
        assert "v3" not in {v["spec"]["version"] for v in shown}
        # v1 was retired and unused: its bytes (source and converted) are gone; v2's stay
        v1 = client.get(f"/v1/images/{image['id']}/versions/{made['v1']['id']}").json()["facts"]
        v2 = client.get(f"/v1/images/{image['id']}/versions/{made['v2']['id']}").json()["facts"]
        assert before - _blob_files(api) == {v1["source_blob"], v1["disk_blob"]}
        assert {v2["source_blob"], v2["disk_blob"]} <= _blob_files(api)
        assert client.get(f"/v1/images/{image['id']}/lifecycle").json()["actions"] == []


def test_manual_deprecation_and_promotion_and_deletion_collects_bytes(
    api: LiveServer, tmp_path: Path
) -> None:
    with api.client() as client:
        image = client.post(f"/v1/projects/{_project(client)}/images", json={"name": "Alpine"}).json()
        version = _version(client, image["id"], "1", _disk(tmp_path, "one"))
        url = f"/v1/images/{image['id']}/versions/{version['id']}"
        assert client.post(f"{url}:deprecate").json()["state"] == "deprecated"
        again = client.post(f"{url}:deprecate")
        assert (
            again.status_code == 409 and "cannot go from deprecated to deprecated" in again.json()["detail"]
        )
        assert client.post(f"{url}:promote").json()["state"] == "active"
        facts = client.get(url).json()["facts"]
        assert {facts["source_blob"], facts["disk_blob"]} <= _blob_files(api)
        assert client.delete(url).status_code == 204
        assert _blob_files(api) == set()


def test_collected_bytes_answer_409_and_a_cancelled_pipeline_fails_its_version(
    database_url: str, tmp_path: Path
) -> None:
    from tests.support.live_server import live_server

    with live_server(database_url, tmp_path / "idle", workers=0) as idle, idle.client() as client:
        image = client.post(f"/v1/projects/{_project(client)}/images", json={"name": "Idle"}).json()
        body = {"version": "1", "metadata": METADATA, "boot_test": {"enabled": False}}
        version = client.post(f"/v1/images/{image['id']}/versions", json=body).json()
        operation = _upload(client, version, _disk(tmp_path, "idle.raw")).json()
        assert operation["state"] == "PENDING"  # nobody runs it: no worker
        assert client.post(f"/v1/operations/{operation['id']}:cancel").json()["state"] == "CANCELLED"
        failed = client.get(f"/v1/images/{image['id']}/versions/{version['id']}").json()
        assert failed["state"] == "failed" and "CANCELLED" in failed["facts"]["failure_reason"]


def test_retired_versions_without_bytes_are_not_served(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        image = client.post(f"/v1/projects/{_project(client)}/images", json={"name": "Old"}).json()
        old = _version(client, image["id"], "old", _disk(tmp_path, "old"), uuid_validity="2020-01-01")
        client.post(f"/v1/images/{image['id']}/lifecycle:apply")
        gone = client.get(f"/v1/images/{image['id']}/versions/{old['id']}/file")
        assert gone.status_code == 409 and "collected" in gone.json()["detail"]


def test_housekeeping_sweeps_only_stale_temporary_files(tmp_path: Path) -> None:
    from sovra.images.blobstore import LocalBlobStore

    store = LocalBlobStore(tmp_path / "blobs")
    stale, fresh = store.temporary_dir / "incoming-stale", store.temporary_dir / "incoming-fresh"
    stale.write_bytes(b"a crashed upload")
    fresh.write_bytes(b"an upload in progress")
    os.utime(stale, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    assert store.sweep_temporary(older_than_seconds=86400) == 1
    assert not stale.exists() and fresh.exists()
