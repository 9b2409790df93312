"""Servers through the real API on both backends, on simulated (``fake://``) hosts: the state
model, the checks that refuse impossible requests before anything is written, "no valid host"
reasons, resize claims, power-state sync, idempotency and tenant isolation. The same code paths
drive real libvirt in tests/test_servers_e2e.py."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from sovra.store import placement
from sovra.virt import fake
from tests.support.compute import finished, project, register_host, server_in, succeeded, upload, wait_until
from tests.support.live_server import LiveServer

METADATA = {
    "architecture": "x86_64",
    "min_disk": 1,
    "min_ram": 128,
    "os_distro": "debian",
    "os_version": "12",
    "replace_frequency": "monthly",
    "provided_until": "none",
    "image_source": "private",
    "image_description": "test",
    "image_build_date": "2026-11-01",
    "image_original_user": "root",
}


def _fake_host(client: httpx.Client, cpus: int = 4, memory_mib: int = 8192) -> tuple[dict[str, Any], str]:
    name = f"f{secrets.token_hex(4)}"
    host = register_host(client, name, f"fake://{name}?cpus={cpus}&memory_mib={memory_mib}&disk_gib=100")
    return host, name


def _version(client: httpx.Client, project_id: str, tmp_path: Path, **metadata: Any) -> dict[str, Any]:
    image = client.post(
        f"/v1/projects/{project_id}/images", json={"name": f"img{secrets.token_hex(3)}"}
    ).json()
    body = {"version": "1", "metadata": {**METADATA, **metadata}, "boot_test": {"enabled": False}}
    response = client.post(f"/v1/images/{image['id']}/versions", json=body)
    assert response.status_code == 201, response.text
    version: dict[str, Any] = response.json()
    raw = tmp_path / f"{secrets.token_hex(4)}.raw"
    raw.write_bytes(b"\0" * 1024 * 1024)
    upload(client, version, raw)
    return version


def _create(client: httpx.Client, project_id: str, image: str, flavor: str = "SCS-1V-2", **extra: Any) -> Any:
    return client.post(
        f"/v1/projects/{project_id}/servers",
        json={"name": f"s{secrets.token_hex(3)}", "image": image, "flavor": flavor, **extra},
    )


def _active(client: httpx.Client, project_id: str, image: str, **extra: Any) -> dict[str, Any]:
    response = _create(client, project_id, image, **extra)
    assert response.status_code == 201, response.text
    server = server_in(client, response.json()["id"], {"ACTIVE", "SHUTOFF", "ERROR"}, timeout=60)
    assert server["state"] in ("ACTIVE", "SHUTOFF"), server["fault"]
    return server


def test_a_server_on_a_simulated_host_lives_and_dies_cleanly(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        host, _ = _fake_host(client)
        project_id = project(client, "p")
        version = _version(client, project_id, tmp_path)
        server = _active(client, project_id, version["id"])
        assert (server["power_state"], server["flavor"]["name"], server["image"]["version_id"]) == (
            "running",
            "SCS-1V-2",
            version["id"],
        )
        usage = client.get(f"/v1/hosts/{host['id']}").json()["usage"]
        assert (usage["vcpus"], usage["memory_mib"], usage["servers"]) == (1, 2048, 1)
        # the image version and the flavor are in use: neither can be deleted under the server
        edges = client.get(f"/v1/resources/{server['id']}/edges").json()["items"]
        assert {(e["type"], e["target_id"]) for e in edges} >= {
            ("uses", version["id"]),
            ("uses", server["flavor"]["id"]),
            ("runs-on", host["id"]),
        }
        operation = client.delete(f"/v1/servers/{server['id']}")
        assert operation.status_code == 202
        succeeded(client, operation.json()["id"])
        assert client.get(f"/v1/servers/{server['id']}").status_code == 404
        usage = client.get(f"/v1/hosts/{host['id']}").json()["usage"]
        assert (usage["vcpus"], usage["memory_mib"], usage["servers"]) == (0, 0, 0)
        with api.db.read() as conn:
            assert placement.allocation_of(conn, server["id"]) is None


def test_requests_that_cannot_succeed_are_refused_and_create_nothing(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        _fake_host(client)
        project_id = project(client, "p")
        version = _version(client, project_id, tmp_path, min_ram=4096)
        cases = [
            ({"flavor": "SCS-9V-99"}, 404, "flavor 'SCS-9V-99' not found"),
            ({"flavor": "SCS-1V-2"}, 400, "needs at least 4096 MiB"),  # image min_ram above the flavor
            ({"image": "0190a000-0000-7000-8000-000000000000"}, 404, "not found"),
            ({"name": "no spaces"}, 400, "name 'no spaces' is invalid"),
            ({"user_data": "x" * (64 * 1024 + 1)}, 422, "user_data"),
            ({"key_names": ["missing"]}, 400, "missing"),
            ({"power_state": "paused"}, 422, "power_state"),
        ]
        for override, code, words in cases:
            body = {"name": "web", "image": version["id"], "flavor": "SCS-2V-8", **override}
            response = client.post(f"/v1/projects/{project_id}/servers", json=body)
            assert response.status_code == code, (override, response.text)
            assert words in response.text, (override, response.text)
        assert client.get("/v1/servers").json()["items"] == []
        deprecate = client.post(f"/v1/images/{version['image_id']}/versions/{version['id']}:deprecate")
        assert deprecate.status_code == 200, deprecate.text
        response = _create(client, project_id, version["id"], flavor="SCS-2V-8")
        assert response.status_code == 409 and "only from active versions" in response.text
        assert client.get("/v1/servers").json()["items"] == []


def test_no_valid_host_says_which_filter_removed_which_host(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        small, small_name = _fake_host(client, cpus=2, memory_mib=4096)
        closed, closed_name = _fake_host(client, cpus=64, memory_mib=262144)
        patch = client.patch(
            f"/v1/hosts/{closed['id']}", json={"spec": {**closed["spec"], "admin_state": "maintenance"}}
        )
        assert patch.status_code == 200, patch.text
        project_id = project(client, "p")
        version = _version(client, project_id, tmp_path)
        response = _create(client, project_id, version["id"], flavor="SCS-8V-32")
        assert response.status_code == 201, response.text
        operation = finished(client, response.json()["operation_id"])
        assert operation["state"] == "FAILED" and operation["error"]["code"] == "NO_VALID_HOST"
        message = operation["error"]["message"]
        assert closed_name in message and small_name in message and "maintenance" in message, message
        server = client.get(f"/v1/servers/{response.json()['id']}").json()
        assert server["state"] == "ERROR" and server["operation_id"] is None  # never left BUILDING
        assert server["fault"]["code"] == "NO_VALID_HOST"
        with api.db.read() as conn:
            assert placement.allocation_of(conn, server["id"]) is None
        assert client.get(f"/v1/hosts/{small['id']}").json()["usage"]["servers"] == 0
        succeeded(client, client.delete(f"/v1/servers/{server['id']}").json()["id"])


def test_power_actions_follow_the_state_model(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        _fake_host(client)
        project_id = project(client, "p")
        version = _version(client, project_id, tmp_path)
        server = _active(client, project_id, version["id"])
        url = f"/v1/servers/{server['id']}"
        refused = client.post(f"{url}:start")
        assert refused.status_code == 409 and "start needs one of: ERROR, SHUTOFF" in refused.text
        succeeded(client, client.post(f"{url}:stop", json={"grace_seconds": 0}).json()["id"])
        stopped = client.get(url).json()
        assert (stopped["state"], stopped["power_state"], stopped["desired_power_state"]) == (
            "SHUTOFF",
            "shutoff",
            "stopped",
        )
        assert client.post(f"{url}:reboot").status_code == 409
        succeeded(client, client.post(f"{url}:start").json()["id"])
        reboot = client.post(f"{url}:reboot", json={"hard": True})
        succeeded(client, reboot.json()["id"])
        assert client.get(url).json()["state"] == "ACTIVE"
        # one operation at a time: a second action names the running one
        first = client.post(f"{url}:stop", json={"grace_seconds": 0})
        second = client.post(f"{url}:reboot", json={"hard": True})
        # refused either for the running stop (named) or, if the instant fake host already finished
        # it, because a SHUTOFF server cannot reboot softly: never a second operation
        assert second.status_code == 409, second.text
        assert first.json()["id"] in second.text or "is SHUTOFF" in second.text, second.text
        succeeded(client, first.json()["id"])
        succeeded(client, client.delete(url).json()["id"])


def test_resize_claims_on_the_host_and_a_misfit_changes_nothing(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        host, _ = _fake_host(client, cpus=4, memory_mib=16384)  # 16 vCPUs after the 4x ratio
        project_id = project(client, "p")
        version = _version(client, project_id, tmp_path)
        server = _active(client, project_id, version["id"], flavor="SCS-1V-2")
        url = f"/v1/servers/{server['id']}"
        succeeded(client, client.post(f"{url}:resize", json={"flavor": "SCS-2V-8"}).json()["id"])
        resized = client.get(url).json()
        assert (resized["state"], resized["flavor"]["name"]) == ("ACTIVE", "SCS-2V-8")
        usage = client.get(f"/v1/hosts/{host['id']}").json()["usage"]
        assert (usage["vcpus"], usage["memory_mib"]) == (2, 8192)
        misfit = client.post(f"{url}:resize", json={"flavor": "SCS-4V-32"})  # 32 GiB on a 16 GiB host
        failed = finished(client, misfit.json()["id"])
        assert failed["error"]["code"] == "RESIZE_DOES_NOT_FIT", failed["error"]
        after = client.get(url).json()
        assert (after["state"], after["flavor"]["name"]) == ("ACTIVE", "SCS-2V-8")
        usage = client.get(f"/v1/hosts/{host['id']}").json()["usage"]
        assert (usage["vcpus"], usage["memory_mib"]) == (2, 8192)
        same = client.post(f"{url}:resize", json={"flavor": "SCS-2V-8"})
        assert same.status_code == 400 and "already has flavor" in same.text
        succeeded(client, client.delete(url).json()["id"])


def test_a_vm_that_dies_shows_within_seconds(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        _, host_name = _fake_host(client)
        project_id = project(client, "p")
        version = _version(client, project_id, tmp_path)
        server = _active(client, project_id, version["id"])
        fake.crash(host_name, server["id"])

        def dead() -> dict[str, Any] | None:
            current: dict[str, Any] = client.get(f"/v1/servers/{server['id']}").json()
            return current if current["state"] == "ERROR" else None

        seen = wait_until(dead, 30, "the crashed VM to show as ERROR")
        assert seen["power_state"] == "crashed"
        running = next(c for c in seen["conditions"] if c["type"] == "Running")
        assert (running["status"], running["reason"]) == ("False", "GuestCrashed")
        succeeded(client, client.post(f"/v1/servers/{server['id']}:reboot", json={"hard": True}).json()["id"])
        assert client.get(f"/v1/servers/{server['id']}").json()["state"] == "ACTIVE"
        succeeded(client, client.delete(f"/v1/servers/{server['id']}").json()["id"])


def test_request_ids_make_creates_and_actions_idempotent(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        _fake_host(client)
        project_id = project(client, "p")
        version = _version(client, project_id, tmp_path)
        first = _create(client, project_id, version["id"], request_id="create-1")
        assert first.status_code == 201
        server_in(client, first.json()["id"], {"ACTIVE"}, timeout=60)
        stop = client.post(f"/v1/servers/{first.json()['id']}:stop", json={"request_id": "stop-1"})
        again = client.post(f"/v1/servers/{first.json()['id']}:stop", json={"request_id": "stop-1"})
        assert again.status_code == 202 and again.json()["id"] == stop.json()["id"]
        succeeded(client, stop.json()["id"])
        succeeded(client, client.delete(f"/v1/servers/{first.json()['id']}").json()["id"])


def test_a_project_with_servers_is_not_torn_down_under_them(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        _fake_host(client)
        project_id = project(client, "p")
        version = _version(client, project_id, tmp_path)
        server = _active(client, project_id, version["id"])
        operation = finished(client, client.delete(f"/v1/projects/{project_id}").json()["id"])
        assert operation["state"] == "FAILED" and operation["error"]["code"] == "SERVERS_EXIST"
        assert server["name"] in operation["error"]["message"]
        assert client.get(f"/v1/servers/{server['id']}").json()["state"] == "ACTIVE"
        succeeded(client, client.delete(f"/v1/servers/{server['id']}").json()["id"])
        succeeded(client, client.delete(f"/v1/projects/{project_id}").json()["id"])


@pytest.mark.parametrize("role", ["reader"])
def test_other_tenants_see_nothing_and_readers_cannot_act(api: LiveServer, tmp_path: Path, role: str) -> None:
    with api.client() as client:
        _fake_host(client)
        mine = project(client, "mine")
        theirs = project(client, "theirs")
        version = _version(client, mine, tmp_path)
        server = _active(client, mine, version["id"])
        outsider = client.post(f"/v1/projects/{theirs}/tokens", json={"name": "o", "role": "manager"}).json()
        reader = client.post(f"/v1/projects/{mine}/tokens", json={"name": "r", "role": role}).json()
        with api.client(outsider["secret"]) as other:
            assert other.get(f"/v1/servers/{server['id']}").status_code == 404
            assert other.get("/v1/servers").json()["items"] == []
            assert other.post(f"/v1/servers/{server['id']}:stop").status_code == 404
            assert other.get(f"/v1/servers/{server['id']}/console").status_code == 404
        with api.client(reader["secret"]) as looking:
            shown = looking.get(f"/v1/servers/{server['id']}").json()
            assert shown["state"] == "ACTIVE" and shown["host"] is None  # hosts are the provider's business
            assert looking.post(f"/v1/servers/{server['id']}:stop").status_code == 403
            assert looking.get(f"/v1/servers/{server['id']}/console").status_code == 403
        succeeded(client, client.delete(f"/v1/servers/{server['id']}").json()["id"])
