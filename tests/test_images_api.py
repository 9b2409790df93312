"""Image lines and versions through the real API: uploads are inspected on the stream and stored
only when every check passes; conversion is a recorded derived-from; downloads serve ranges."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import crafted_images as crafted
from tests.support.live_server import LiveServer

METADATA: dict[str, Any] = {
    "architecture": "x86_64",
    "min_disk": 1,
    "min_ram": 128,
    "os_distro": "debian",
    "os_version": "12",
    "replace_frequency": "never",
    "provided_until": "none",
    "uuid_validity": "forever",
    "image_source": "private",
    "image_description": "test image",
    "image_build_date": "2026-11-20",
    "image_original_user": "root",
}


def _project(client: httpx.Client, name: str = "images") -> str:
    response = client.post("/v1/projects", json={"name": name})
    assert response.status_code == 201, response.text
    project_id: str = response.json()["id"]
    return project_id


def _image(client: httpx.Client, project_id: str, name: str = "Debian 12") -> dict[str, Any]:
    response = client.post(f"/v1/projects/{project_id}/images", json={"name": name})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _version(client: httpx.Client, image_id: str, version: str = "1", **source: Any) -> dict[str, Any]:
    body = {
        "version": version,
        "metadata": METADATA,
        "boot_test": {"enabled": False},
        "source": {"type": "upload", **source},
    }
    response = client.post(f"/v1/images/{image_id}/versions", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _upload(client: httpx.Client, version: dict[str, Any], path: Path) -> httpx.Response:
    url = f"/v1/images/{version['image_id']}/versions/{version['id']}/file"
    with path.open("rb") as handle:
        return client.put(url, content=handle.read(), headers={"content-type": "application/octet-stream"})


def _wait(client: httpx.Client, operation_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        operation: dict[str, Any] = client.get(f"/v1/operations/{operation_id}").json()
        if operation["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return operation
        time.sleep(0.1)
    raise AssertionError(f"operation {operation_id} did not finish")


def _blobs(api: LiveServer) -> list[Path]:
    root = api.settings.resolved_blob_dir / "sha256"
    return sorted(p for p in root.rglob("*") if p.is_file())


def _leftovers(api: LiveServer) -> list[Path]:
    return list((api.settings.resolved_blob_dir / "tmp").glob("*"))


def test_a_raw_upload_is_converted_to_qcow2_and_served_with_ranges(api: LiveServer, tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(1024 * 1024) + b"\0" * (3 * 1024 * 1024))
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    with api.client() as client:
        image = _image(client, _project(client))
        version = _version(client, image["id"], declared_format="raw", declared_sha256=digest)
        assert version["state"] == "importing"
        response = _upload(client, version, raw)
        assert response.status_code == 202, response.text
        done = _wait(client, response.json()["id"])
        assert done["state"] == "SUCCEEDED", done["error"]
        assert [s["name"] for s in done["steps"]] == ["convert", "boot-test", "promote"]
        got = client.get(f"/v1/images/{image['id']}/versions/{version['id']}").json()
        facts = got["facts"]
        assert got["state"] == "active"
        assert (facts["sha256"], facts["size"], facts["source_format"], facts["disk_format"]) == (
            digest,
            raw.stat().st_size,
            "raw",
            "qcow2",
        )
        assert facts["disk_blob"] != facts["source_blob"] and facts["virtual_size"] == raw.stat().st_size
        # the converted blob is derived from the uploaded one, and the version uses both
        deps = client.get(f"/v1/resources/{version['id']}/dependencies", params={"depth": 1}).json()["items"]
        blobs = {d["name"]: d["id"] for d in deps if d["kind"] == "ImageBlob" and d["via"] == "uses"}
        source_blob, disk_blob = blobs[facts["source_blob"][:63]], blobs[facts["disk_blob"][:63]]
        edges = client.get(f"/v1/resources/{disk_blob}/edges").json()["items"]
        assert {"source_id": disk_blob, "target_id": source_blob, "type": "derived-from"} in edges
        url = f"/v1/images/{image['id']}/versions/{version['id']}/file"
        whole = client.get(url)
        assert whole.status_code == 200 and whole.content[:4] == b"QFI\xfb"
        assert hashlib.sha256(whole.content).hexdigest() == facts["disk_blob"]
        part = client.get(url, headers={"Range": "bytes=4-11"})
        assert part.status_code == 206 and part.content == whole.content[4:12]
        assert part.headers["content-range"] == f"bytes 4-11/{len(whole.content)}"
        assert client.get(url, headers={"Range": "bytes=-4"}).content == whole.content[-4:]
        assert client.get(url, headers={"Range": f"bytes={len(whole.content)}-"}).status_code == 400
    assert _leftovers(api) == []


@pytest.mark.parametrize(
    ("craft", "declared", "code", "check"),
    [
        (crafted.qcow2_with_backing_file, "qcow2", "UNSAFE_IMAGE", "backing_file"),
        (crafted.qcow2_with_data_file, "qcow2", "UNSAFE_IMAGE", "data_file"),
        (crafted.qcow2_with_backing_file, "raw", "UNSAFE_IMAGE", "backing_file"),  # CVE-2024-40767
        (lambda d: crafted.qcow2(d), "raw", "FORMAT_MISMATCH", None),
        (lambda d: crafted.vmdk_text_descriptor(d), None, "UNSAFE_IMAGE", "descriptor"),
        (lambda d: crafted.created(d, "qed"), None, "UNSAFE_IMAGE", "banned"),
    ],
)
def test_hostile_uploads_are_refused_and_leave_nothing(
    api: LiveServer, tmp_path: Path, craft: Any, declared: str | None, code: str, check: str | None
) -> None:
    hostile = craft(tmp_path)
    with api.client() as client:
        image = _image(client, _project(client))
        version = _version(client, image["id"], **({"declared_format": declared} if declared else {}))
        response = _upload(client, version, hostile)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["code"] == code and problem.get("check") == check, problem
        got = client.get(f"/v1/images/{image['id']}/versions/{version['id']}").json()
        assert got["state"] == "failed" and got["facts"]["failure_reason"].startswith(code)
        assert got["facts"]["sha256"] is None
    assert _blobs(api) == [] and _leftovers(api) == []


def test_a_declared_checksum_that_does_not_match_is_refused(api: LiveServer, tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\1" * 65536)
    with api.client() as client:
        image = _image(client, _project(client))
        version = _version(client, image["id"], declared_sha256="0" * 64)
        response = _upload(client, version, raw)
        assert response.status_code == 422 and response.json()["code"] == "CHECKSUM_MISMATCH"
        assert hashlib.sha256(raw.read_bytes()).hexdigest() in response.json()["detail"]
        again = _upload(client, version, raw)  # a failed version takes no second upload
        assert again.status_code == 409 and "failed" in again.json()["detail"]
    assert _blobs(api) == []


def test_versions_are_listed_deleted_and_validated(api: LiveServer, tmp_path: Path) -> None:
    with api.client() as client:
        image = _image(client, _project(client))
        first = _version(client, image["id"], "20261120")
        listed = client.get(f"/v1/images/{image['id']}/versions").json()["items"]
        assert [v["name"] for v in listed] == ["Debian 12:20261120"]
        duplicate = client.post(
            f"/v1/images/{image['id']}/versions", json={"version": "20261120", "metadata": METADATA}
        )
        assert duplicate.status_code == 409
        bad = client.post(
            f"/v1/images/{image['id']}/versions",
            json={"version": "2", "metadata": {**METADATA, "provided_until": "soon"}},
        )
        assert bad.status_code == 422 and any("provided_until" in e["field"] for e in bad.json()["errors"])
        hashed = client.post(
            f"/v1/images/{image['id']}/versions",
            json={"version": "3", "metadata": {**METADATA, "os_hash_value": "x"}},
        )
        assert hashed.status_code == 422
        assert client.delete(f"/v1/images/{image['id']}").status_code == 409  # still has a version
        assert client.delete(f"/v1/images/{image['id']}/versions/{first['id']}").status_code == 204
        assert client.delete(f"/v1/images/{image['id']}").status_code == 204


def _bootable_version(client: httpx.Client, image_id: str, version: str) -> dict[str, Any]:
    body = {"version": version, "metadata": METADATA, "boot_test": {"timeout_seconds": 120}}
    response = client.post(f"/v1/images/{image_id}/versions", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.mark.slow
def test_a_version_becomes_active_only_after_it_boots(
    api: LiveServer, tiny_image: Path, broken_image: Path
) -> None:
    with api.client() as client:
        image = _image(client, _project(client))
        good = _bootable_version(client, image["id"], "good")
        done = _wait(client, _upload(client, good, tiny_image).json()["id"], timeout=300)
        assert done["state"] == "SUCCEEDED", done["error"]
        boot = next(s for s in done["steps"] if s["name"] == "boot-test")
        assert boot["state"] == "SUCCEEDED" and boot["result"]["seconds"] > 0
        active = client.get(f"/v1/images/{image['id']}/versions/{good['id']}").json()
        assert active["state"] == "active" and "login:" in active["facts"]["boot_log_tail"]
        # qcow2 in, qcow2 out: no conversion, the uploaded blob is the disk
        assert active["facts"]["disk_blob"] == active["facts"]["source_blob"]

        bad = _bootable_version(client, image["id"], "broken")
        failed = _wait(client, _upload(client, bad, broken_image).json()["id"], timeout=300)
        assert failed["state"] == "FAILED" and failed["error"]["code"] == "BOOT_TEST_FAILED"
        assert "console tail" in failed["error"]["message"]
        version = client.get(f"/v1/images/{image['id']}/versions/{bad['id']}").json()
        assert version["state"] == "failed" and version["facts"]["failure_reason"].startswith(
            "BOOT_TEST_FAILED"
        )
        assert version["facts"]["boot_log_tail"]


def test_an_interrupted_upload_leaves_no_blob_and_a_failed_version(api: LiveServer) -> None:
    import http.client
    from urllib.parse import urlparse

    with api.client() as client:
        image = _image(client, _project(client))
        version = _version(client, image["id"])
        target = urlparse(api.url)
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=10)
        connection.putrequest("PUT", f"/v1/images/{image['id']}/versions/{version['id']}/file")
        connection.putheader("Authorization", f"Bearer {api.token}")
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Content-Length", str(64 * 1024 * 1024))
        connection.endheaders()
        connection.send(os.urandom(3 * 1024 * 1024))  # then the client goes away
        connection.close()
        deadline = time.monotonic() + 30
        while (got := client.get(f"/v1/images/{image['id']}/versions/{version['id']}").json())[
            "state"
        ] != "failed":
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
        assert (
            got["facts"]["failure_reason"].startswith("UPLOAD_INTERRUPTED") and got["facts"]["sha256"] is None
        )
    assert _blobs(api) == [] and _leftovers(api) == []
