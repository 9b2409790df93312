"""Helpers for the compute tests: a registered host, an active image, waiting for servers.

Everything goes through the public API, as a user would; libvirt is asked directly only to check
what the API claims (domains and volumes that exist or are gone).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import libvirt

from sovra.images.build import BuildResult

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def finished(client: httpx.Client, operation_id: str, timeout: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        operation: dict[str, Any] = client.get(f"/v1/operations/{operation_id}").json()
        return operation if operation["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    return wait_until(done, timeout, f"operation {operation_id}")


def succeeded(client: httpx.Client, operation_id: str, timeout: float = 300) -> dict[str, Any]:
    operation = finished(client, operation_id, timeout)
    assert operation["state"] == "SUCCEEDED", operation["error"]
    return operation


def project(client: httpx.Client, name: str) -> str:
    response = client.post("/v1/projects", json={"name": name})
    assert response.status_code == 201, response.text
    project_id: str = response.json()["id"]
    return project_id


def register_host(client: httpx.Client, name: str, uri: str) -> dict[str, Any]:
    response = client.post("/v1/hosts", json={"name": name, "spec": {"uri": uri}})
    assert response.status_code == 201, response.text
    host: dict[str, Any] = response.json()
    succeeded(client, host["operation_id"], timeout=120)
    current: dict[str, Any] = client.get(f"/v1/hosts/{host['id']}").json()
    return current


def active_image(
    client: httpx.Client, project_id: str, build: BuildResult, *, boot_test: bool = False
) -> dict[str, Any]:
    """An image with one active version holding ``build``'s bytes; returns the version."""
    response = client.post(f"/v1/projects/{project_id}/images", json={"name": "Sovra tiny"})
    assert response.status_code == 201, response.text
    image = response.json()
    body = {
        "version": "1",
        "metadata": build.metadata,
        "boot_test": {"enabled": boot_test, "timeout_seconds": 120},
    }
    response = client.post(f"/v1/images/{image['id']}/versions", json=body)
    assert response.status_code == 201, response.text
    version: dict[str, Any] = response.json()
    upload(client, version, build.path)
    return version


def upload(client: httpx.Client, version: dict[str, Any], path: Path) -> None:
    url = f"/v1/images/{version['image_id']}/versions/{version['id']}/file"
    response = client.put(
        url, content=path.read_bytes(), headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 202, response.text
    succeeded(client, response.json()["id"], timeout=300)


def server_in(client: httpx.Client, server_id: str, states: set[str], timeout: float = 300) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        server: dict[str, Any] = client.get(f"/v1/servers/{server_id}").json()
        return server if server["state"] in states and server["operation_id"] is None else None

    return wait_until(check, timeout, f"server {server_id} in {sorted(states)}")


def domains_named(uri: str, name: str) -> list[str]:
    """Names of the domains on the host whose name is ``name`` (libvirt asked directly)."""
    conn = libvirt.open(uri)
    try:
        return [d.name() for d in conn.listAllDomains() if d.name() == name]
    finally:
        conn.close()


def volumes_with(uri: str, fragment: str) -> list[str]:
    """Names of the volumes in any pool of the host that contain ``fragment``."""
    conn = libvirt.open(uri)
    try:
        found: list[str] = []
        for pool in conn.listAllStoragePools():
            if pool.isActive():
                pool.refresh(0)
                found += [v.name() for v in pool.listAllVolumes() if fragment in v.name()]
        return found
    finally:
        conn.close()
