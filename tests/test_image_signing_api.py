"""Signatures through the API: trusted keys per project, a policy that requires a signature before a
version becomes active or is served, bundles for export, and an integrity check on every read."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sovra.images import signing
from tests.support.live_server import LiveServer
from tests.test_images_api import METADATA, _image, _project, _upload, _wait


@pytest.fixture
def keys() -> tuple[signing.KeyPair, signing.KeyPair]:
    return signing.generate_key_pair(b"trusted"), signing.generate_key_pair(b"stranger")


def _sign(pair: signing.KeyPair, passphrase: bytes, data: bytes) -> str:
    key = signing.load_private_key(pair.private_pem, passphrase)
    return signing.signature_b64(signing.sign_digest(key, hashlib.sha256(data).hexdigest()))


def _version(client: httpx.Client, image_id: str, version: str, signatures: list[str]) -> dict[str, Any]:
    body = {
        "version": version,
        "metadata": METADATA,
        "boot_test": {"enabled": False},
        "signatures": signatures,
    }
    response = client.post(f"/v1/images/{image_id}/versions", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _signed_project(client: httpx.Client, trusted: signing.KeyPair) -> str:
    project = _project(client, "signed")
    key = client.post(
        f"/v1/projects/{project}/signing-keys",
        json={"name": "release", "public_key_pem": trusted.public_pem.decode()},
    )
    assert key.status_code == 201, key.text
    policy = client.patch(f"/v1/projects/{project}", json={"spec": {"require_image_signature": True}})
    assert policy.status_code == 200 and policy.json()["spec"]["require_image_signature"] is True
    return project


def test_only_versions_signed_by_a_trusted_key_become_active(
    api: LiveServer, tmp_path: Path, keys: tuple[signing.KeyPair, signing.KeyPair]
) -> None:
    trusted, stranger = keys
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(256 * 1024))
    data = disk.read_bytes()
    with api.client() as client:
        image = _image(client, _signed_project(client, trusted))
        cases = {
            "signed": [_sign(trusted, b"trusted", data)],
            "unsigned": [],
            "stranger": [_sign(stranger, b"stranger", data)],
            "other-bytes": [_sign(trusted, b"trusted", data + b"x")],
        }
        outcomes = {}
        for name, signatures in cases.items():
            version = _version(client, image["id"], name, signatures)
            operation = _wait(client, _upload(client, version, disk).json()["id"])
            got = client.get(f"/v1/images/{image['id']}/versions/{version['id']}").json()
            outcomes[name] = (operation["state"], (operation["error"] or {}).get("code"), got["state"])
        assert outcomes == {
            "signed": ("SUCCEEDED", None, "active"),
            "unsigned": ("FAILED", "SIGNATURE_REQUIRED", "failed"),
            "stranger": ("FAILED", "SIGNATURE_REQUIRED", "failed"),
            "other-bytes": ("FAILED", "SIGNATURE_REQUIRED", "failed"),
        }


def test_signatures_export_as_bundles_and_gate_downloads(
    api: LiveServer, tmp_path: Path, keys: tuple[signing.KeyPair, signing.KeyPair]
) -> None:
    trusted, _ = keys
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(128 * 1024))
    data = disk.read_bytes()
    with api.client() as client:
        project = _project(client, "later")
        image = _image(client, project)
        version = _version(client, image["id"], "1", [])
        assert _wait(client, _upload(client, version, disk).json()["id"])["state"] == "SUCCEEDED"
        client.post(
            f"/v1/projects/{project}/signing-keys",
            json={"name": "release", "public_key_pem": trusted.public_pem.decode()},
        )
        client.patch(f"/v1/projects/{project}", json={"spec": {"require_image_signature": True}})
        url = f"/v1/images/{image['id']}/versions/{version['id']}"
        refused = client.get(f"{url}/file")
        assert refused.status_code == 409 and "requires a trusted signature" in refused.json()["detail"]
        bad = client.post(f"{url}/signatures", json={"signature": _sign(trusted, b"trusted", b"other")})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "signature"
        signature = _sign(trusted, b"trusted", data)
        assert client.post(f"{url}/signatures", json={"signature": signature}).status_code == 200
        assert client.get(f"{url}/file").status_code == 200
        listed = client.get(f"{url}/signatures").json()
        [item] = listed["items"]
        assert item["signature"] == signature and item["trusted_key"] == signing.key_fingerprint(
            signing.load_public_key(trusted.public_pem)
        )
        sha256 = hashlib.sha256(data).hexdigest()
        assert listed["sha256"] == sha256
        assert signing.verify_bundle(item["bundle"], [trusted.public_pem], sha256) == item["trusted_key"]


def test_untrusted_key_material_is_refused(api: LiveServer) -> None:
    with api.client() as client:
        project = _project(client, "keys")
        garbage = client.post(
            f"/v1/projects/{project}/signing-keys",
            json={"name": "bad", "public_key_pem": "-----BEGIN PUBLIC KEY-----\n" + "A" * 80},
        )
        assert garbage.status_code == 400 and garbage.json()["errors"][0]["field"] == "public_key_pem"
        assert client.get(f"/v1/projects/{project}/signing-keys").json()["items"] == []


def test_a_blob_corrupted_on_disk_is_not_served(api: LiveServer, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(3 * 1024 * 1024))
    with api.client() as client:
        image = _image(client, _project(client, "rot"))
        version = _version(client, image["id"], "1", [])
        assert _wait(client, _upload(client, version, disk).json()["id"])["state"] == "SUCCEEDED"
        facts = client.get(f"/v1/images/{image['id']}/versions/{version['id']}").json()["facts"]
        blob = api.settings.resolved_blob_dir / "sha256" / facts["disk_blob"][:2] / facts["disk_blob"]
        rotten = bytearray(blob.read_bytes())
        rotten[len(rotten) // 2] ^= 0xFF
        blob.write_bytes(bytes(rotten))
        time.sleep(0.01)
        with pytest.raises(httpx.RemoteProtocolError):  # the transfer is cut short, not completed
            client.get(f"/v1/images/{image['id']}/versions/{version['id']}/file")
        ranged = client.get(
            f"/v1/images/{image['id']}/versions/{version['id']}/file", headers={"Range": "bytes=0-15"}
        )
        assert ranged.status_code == 206  # partial reads are not hashed; hosts verify on arrival


def test_promotion_honours_the_signature_policy(api: LiveServer, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(64 * 1024))
    with api.client() as client:
        project = _project(client, "promote")
        image = _image(client, project)
        version = _version(client, image["id"], "1", [])
        assert _wait(client, _upload(client, version, disk).json()["id"])["state"] == "SUCCEEDED"
        url = f"/v1/images/{image['id']}/versions/{version['id']}"
        assert client.post(f"{url}:deprecate").status_code == 200
        client.patch(f"/v1/projects/{project}", json={"spec": {"require_image_signature": True}})
        refused = client.post(f"{url}:promote")
        assert refused.status_code == 409 and "requires a trusted signature" in refused.json()["detail"]
        assert client.get(url).json()["state"] == "deprecated"


def test_a_version_carries_at_most_eight_signatures(api: LiveServer, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(64 * 1024))
    data = disk.read_bytes()
    pairs = [signing.generate_key_pair(b"p") for _ in range(9)]
    with api.client() as client:
        project = _project(client, "many")
        image = _image(client, project)
        version = _version(client, image["id"], "1", [])
        assert _wait(client, _upload(client, version, disk).json()["id"])["state"] == "SUCCEEDED"
        for index, pair in enumerate(pairs):
            client.post(
                f"/v1/projects/{project}/signing-keys",
                json={"name": f"k{index}", "public_key_pem": pair.public_pem.decode()},
            )
        url = f"/v1/images/{image['id']}/versions/{version['id']}"
        signatures = [_sign(pair, b"p", data) for pair in pairs[:8]]  # ECDSA: every signing differs
        for signature in signatures:
            assert client.post(f"{url}/signatures", json={"signature": signature}).status_code == 200
        repeat = client.post(f"{url}/signatures", json={"signature": signatures[0]})
        assert repeat.status_code == 200  # the same bytes again: nothing added
        ninth = client.post(f"{url}/signatures", json={"signature": _sign(pairs[8], b"p", data)})
        assert ninth.status_code == 409 and "8 signatures" in ninth.json()["detail"]
        assert len(client.get(url).json()["spec"]["signatures"]) == 8
