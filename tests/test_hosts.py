"""Hosts over libvirt: registration reads the inventory, operators set the state, the health check
marks a host that stops answering as down, and a host with servers cannot be forgotten."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sovra.compute.hosts import health_check
from sovra.domain.edges import Edge, EdgeType
from sovra.store import graph
from sovra.store import resources as resource_store
from tests.support.live_server import LiveServer


def _wait_registered(client: httpx.Client, host: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        operation = client.get(f"/v1/operations/{host['operation_id']}").json()
        if operation["state"] in ("SUCCEEDED", "FAILED"):
            current: dict[str, Any] = client.get(f"/v1/hosts/{host['id']}").json()
            return current
        time.sleep(0.1)
    raise AssertionError("host registration did not finish")


def _register(client: httpx.Client, name: str, uri: str, **spec: Any) -> dict[str, Any]:
    response = client.post("/v1/hosts", json={"name": name, "spec": {"uri": uri, **spec}})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["state"] == "registering" and created["operation_id"]
    return _wait_registered(client, created)


@pytest.mark.usefixtures("libvirt_daemon")
def test_a_real_libvirt_host_reports_its_inventory(api: LiveServer) -> None:
    with api.client() as client:
        host = _register(client, "local", "qemu:///system", allocation_ratios={"cpu": 2.0})
    assert host["state"] == "enabled", host["reason"]
    inventory = host["inventory"]
    assert inventory["cpus"] == os.cpu_count() and inventory["arch"] == "x86_64"
    assert inventory["accelerator"] == "tcg"  # /dev/kvm here is not hardware KVM
    meminfo = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    assert abs(inventory["memory_mib"] - meminfo) < meminfo * 0.1
    assert host["capacity"]["vcpus"] == 2 * inventory["cpus"]


def test_operators_set_the_state_and_ratios(api: LiveServer) -> None:
    with api.client() as client:
        host = _register(client, "fake1", "fake://fake1?cpus=8&memory_mib=16384")
        assert host["state"] == "enabled" and host["capacity"]["vcpus"] == 32  # default cpu ratio 4
        url = f"/v1/hosts/{host['id']}"
        patched = client.patch(
            url,
            json={
                "spec": {
                    **host["spec"],
                    "admin_state": "maintenance",
                    "allocation_ratios": {"cpu": 1.0, "ram": 1.5},
                }
            },
        ).json()
        assert patched["state"] == "maintenance" and patched["capacity"]["vcpus"] == 8
        assert patched["capacity"]["memory_mib"] == 24576
        bad = client.patch(url, json={"spec": {**host["spec"], "admin_state": "down"}})
        assert bad.status_code == 422  # down is observed, never chosen
        assert (
            client.post("/v1/hosts", json={"name": "x", "spec": {"uri": "http://evil/"}}).status_code == 422
        )


def test_an_unreachable_host_is_down_and_the_health_check_follows_it(api: LiveServer) -> None:
    with api.client() as client:
        response = client.post(
            "/v1/hosts", json={"name": "gone", "spec": {"uri": "qemu:///system?socket=/nonexistent/sock"}}
        )
        host = _wait_registered(client, response.json(), timeout=120)
        assert host["state"] == "down" and "nonexistent" in host["reason"]
        fake = _register(client, "fake2", "fake://fake2?cpus=2&memory_mib=2048")
    # the fake host vanishes from its URI's point of view: change the URI to one that fails
    with api.db.write() as conn:
        resource_store.update(
            conn,
            fake["id"],
            expected_version=None,
            spec={**fake["spec"], "uri": "qemu:///system?socket=/nonexistent/sock"},
        )
    health_check(api.db, api.settings)
    with api.client() as client:
        assert client.get(f"/v1/hosts/{fake['id']}").json()["state"] == "down"
    with api.db.write() as conn:
        resource_store.update(conn, fake["id"], expected_version=None, spec=fake["spec"])
    health_check(api.db, api.settings)
    with api.client() as client:
        assert client.get(f"/v1/hosts/{fake['id']}").json()["state"] == "enabled"


def test_a_host_with_servers_cannot_be_forgotten(api: LiveServer) -> None:
    with api.client() as client:
        host = _register(client, "busy", "fake://busy?cpus=2&memory_mib=2048")
        project = client.post("/v1/projects", json={"name": "p"}).json()["id"]
    with api.db.write() as conn:
        server = resource_store.create(
            conn, kind="Server", name="web", project_id=project, labels={}, spec={}, state="RUNNING"
        )
        graph.add(conn, Edge(source_id=server.id, target_id=host["id"], type=EdgeType.RUNS_ON))
    with api.client() as client:
        refused = client.delete(f"/v1/hosts/{host['id']}")
        assert refused.status_code == 409 and "web" in refused.json()["detail"]
    with api.db.write() as conn:
        resource_store.delete(conn, [server.id])
    with api.client() as client:
        assert client.delete(f"/v1/hosts/{host['id']}").status_code == 204
