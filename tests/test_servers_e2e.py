"""Servers end to end on the real local libvirt: the tiny Debian-built image boots under QEMU (TCG)
and prints into its console; stop, start, snapshot and delete leave nothing behind. A worker
SIGKILLed in the middle of a create is replaced, and the server still ends ACTIVE with one domain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from sovra.images.build import BuildResult
from sovra.store import placement
from tests.support.compute import (
    active_image,
    domains_named,
    finished,
    project,
    register_host,
    server_in,
    succeeded,
    volumes_with,
    wait_until,
)
from tests.support.databases import migrated, temporary_postgres_database
from tests.support.live_server import LiveServer, live_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SOVRA = Path(sys.executable).with_name("sovra")
MARKER = "sovra-e2e-user-data-ran"
USER_DATA = f"#!/bin/sh\necho {MARKER} on $(hostname)\n"


def _create(client: httpx.Client, project_id: str, version: dict[str, Any], name: str) -> dict[str, Any]:
    response = client.post(
        f"/v1/projects/{project_id}/servers",
        json={"name": name, "image": version["id"], "flavor": "SCS-1L-1", "user_data": USER_DATA},
    )
    assert response.status_code == 201, response.text
    server: dict[str, Any] = response.json()
    assert server["state"] == "BUILDING" and server["operation_id"]
    return server


def _console(client: httpx.Client, server_id: str) -> str:
    response = client.get(f"/v1/servers/{server_id}/console")
    assert response.status_code == 200, response.text
    output: str = response.json()["output"]
    return output


def _no_leftovers(api: LiveServer, uri: str, server_id: str) -> None:
    assert domains_named(uri, server_id) == []
    assert volumes_with(uri, server_id) == []
    with api.db.read() as conn:
        assert placement.allocation_of(conn, server_id) is None


def test_a_server_boots_prints_stops_starts_snapshots_and_leaves_nothing(
    tmp_path: Path, libvirt_daemon: str, tiny_image_build: BuildResult
) -> None:
    url = f"sqlite:///{tmp_path / 'sovra.db'}"
    migrated(url).dispose()
    with live_server(url, tmp_path / "data", workers=2) as api, api.client() as client:
        host = register_host(client, "local", libvirt_daemon)
        assert host["state"] == "enabled" and host["inventory"]["accelerator"] == "tcg"
        project_id = project(client, "e2e")
        version = active_image(client, project_id, tiny_image_build)
        created = _create(client, project_id, version, "web-1")
        server_id = created["id"]
        try:
            server = server_in(client, server_id, {"ACTIVE", "ERROR"})
            assert server["state"] == "ACTIVE", server["fault"]
            assert server["power_state"] == "running" and server["host"]["name"] == "local"
            assert domains_named(libvirt_daemon, server_id) == [server_id]

            # the guest's own output: the NoCloud seed reached it and its user data ran
            log = wait_until(
                lambda: (text := _console(client, server_id)) and "login:" in text and text,
                120,
                "the guest's login prompt in its console log",
            )
            assert f"{MARKER} on web-1" in log and f"instance-id {server_id}" in log

            stop = client.post(f"/v1/servers/{server_id}:stop", json={"grace_seconds": 60})
            assert stop.status_code == 202, stop.text
            assert succeeded(client, stop.json()["id"])["result"]["forced"] is False  # the guest obeyed ACPI
            server = client.get(f"/v1/servers/{server_id}").json()
            assert (server["state"], server["power_state"], server["desired_power_state"]) == (
                "SHUTOFF",
                "shutoff",
                "stopped",
            )

            start = client.post(f"/v1/servers/{server_id}:start")
            succeeded(client, start.json()["id"])
            assert client.get(f"/v1/servers/{server_id}").json()["state"] == "ACTIVE"

            snapshot = client.post(
                f"/v1/servers/{server_id}:snapshot",
                json={"image_id": version["image_id"], "version": "snap-1"},
            )
            assert snapshot.status_code == 202, snapshot.text
            succeeded(client, snapshot.json()["id"])
            versions = client.get(f"/v1/images/{version['image_id']}/versions").json()["items"]
            snap = next(v for v in versions if v["spec"]["version"] == "snap-1")
            wait_until(
                lambda: (
                    client.get(f"/v1/images/{version['image_id']}/versions/{snap['id']}").json()["state"]
                    in ("active", "failed")
                ),
                300,
                "the snapshot version to pass the image pipeline",
            )
            snap = client.get(f"/v1/images/{version['image_id']}/versions/{snap['id']}").json()
            assert snap["state"] == "active", snap["facts"].get("failure_reason")
            assert client.get(f"/v1/servers/{server_id}").json()["state"] == "ACTIVE"  # running on
        finally:
            deleted = client.delete(f"/v1/servers/{server_id}")
            assert deleted.status_code == 202, deleted.text
            succeeded(client, deleted.json()["id"])
        assert client.get(f"/v1/servers/{server_id}").status_code == 404
        _no_leftovers(api, libvirt_daemon, server_id)
        usage = client.get(f"/v1/hosts/{host['id']}").json()["usage"]
        assert (usage["vcpus"], usage["memory_mib"], usage["servers"]) == (0, 0, 0)
        cached = client.get(f"/v1/hosts/{host['id']}").json()["image_cache"]
        assert len(cached) == 1 and volumes_with(libvirt_daemon, cached[0]["volume"])
        assert client.delete(f"/v1/hosts/{host['id']}").status_code == 204
        assert volumes_with(libvirt_daemon, cached[0]["volume"]) == []  # a forgotten host keeps no copies


# -- a worker dies in the middle of a create -------------------------------------------------------


@pytest.fixture
def postgres_api(tmp_path: Path) -> Iterator[tuple[LiveServer, str]]:
    with temporary_postgres_database() as url:
        migrated(url).dispose()
        with live_server(url, tmp_path / "data", workers=0) as api:
            yield api, url


def _worker(url: str, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SOVRA_DATABASE_URL": url,
        "SOVRA_DATA_DIR": str(data_dir),
        "SOVRA_LEASE_SECONDS": "3",
        "SOVRA_POLL_SECONDS": "0.1",
        "SOVRA_HOST_URI_SCHEMES": json.dumps(["qemu"]),
    }
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [str(SOVRA), "worker"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_worker_killed_mid_create_is_replaced_and_the_server_ends_active_with_one_domain(
    postgres_api: tuple[LiveServer, str], tmp_path: Path, libvirt_daemon: str, tiny_image_build: BuildResult
) -> None:
    api, url = postgres_api
    with ExitStack() as stack, api.client() as client:
        first = _worker(url, api.settings.data_dir, tmp_path / "worker1.log")
        stack.callback(_stop, first)
        host = register_host(client, "local", libvirt_daemon)
        project_id = project(client, "crash")
        version = active_image(client, project_id, tiny_image_build)
        server_id = _create(client, project_id, version, "survivor")["id"]
        try:
            operation_id = client.get(f"/v1/servers/{server_id}").json()["operation_id"]

            def in_a_host_step() -> bool:
                steps = client.get(f"/v1/operations/{operation_id}").json()["steps"]
                return any(s["name"] in ("image", "disks", "boot") for s in steps)

            wait_until(in_a_host_step, 120, "the create to reach a step on the host", interval=0.02)
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = _worker(url, api.settings.data_dir, tmp_path / "worker2.log")
            stack.callback(_stop, second)
            operation = finished(client, operation_id)
            assert operation["state"] == "SUCCEEDED", operation["error"]
            workers = {s["worker"] for s in operation["steps"]}
            assert len(workers) == 2, "the second worker took over"
            assert client.get(f"/v1/servers/{server_id}").json()["state"] == "ACTIVE"
            assert domains_named(libvirt_daemon, server_id) == [server_id]
        finally:
            deleted = client.delete(f"/v1/servers/{server_id}")
            if deleted.status_code == 202:
                finished(client, deleted.json()["id"])
        _no_leftovers(api, libvirt_daemon, server_id)
        assert client.delete(f"/v1/hosts/{host['id']}").status_code == 204
