"""SSH key pairs through the real API, on SQLite and PostgreSQL: imports of every accepted key type
(fingerprints as ssh-keygen prints them), generated pairs whose private key is answered once and
kept nowhere, refusals that name the problem and write nothing, tenancy, and ``public_keys_of``."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sovra.compute.keypairs import public_keys_of
from sovra.domain.errors import InvalidArgument
from sovra.domain.identity import Role
from sovra.domain.keypair import KEYPAIR_KIND, generate, parse_public_key
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.store.schema import audit_records, resources
from tests.support.live_server import LiveServer
from tests.support.principals import PROBLEM, create_project, http_client, store_project, store_token

OPENSSH = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
# A real 1024-bit DSA public key (cryptography and OpenSSH no longer make them without warnings).
DSA_KEY = (
    "ssh-dss AAAAB3NzaC1kc3MAAACBAMTgYBYWvLBDTffwIWOiG9vNibGHboQenjpdgkwKe3zoNw6LBDX8yYlapofX5Yzle9tF"
    "Vz/p1p26tckF7NLLIi6gS2jIiKhjNmr2uHHjKCxR4RE7dGvlknErRhgKWh/3nL3WLXbQy4ar5r7WuDePpidd0Rgeeq3vAu03"
    "JOZua1HtAAAAFQD6w5Vbyc3covHlHQRwC2nYdZNBpQAAAIEAwbyi4qxF7bfLMdlXy1Gg/uxLrRb7oM3y4JkU/agWpfiMv1YX"
    "jDk0UttaewtuTjjy2qSwV1hrxZxb1h1JuH5Cs1JCYiV5rV0uq7r4lxkv0DbHW77dEK7PuURXmyWDhLXZ0dPPkdTFw85rTwq1"
    "5joQOkd9XxQaZJNUFCWY/2xass8AAACAVMKt5ho42gvTgB2EmVhvSFUHIcAYmgeBWq8GtyNt+ddzpSHKMSISsJnGRbJrOc0e"
    "F3o/5K5MeurNdRhCCRiGIywISjTATPqlld7MBik3cu/636FekEZYyobU5BFttiOIS0k8httOwaQsLZ3JJ2EKpubNhaDTJxlE"
    "kR/ILAZY6Kk= old@dsa"
)
needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")


def _line(key: Any, comment: str = "") -> str:
    canonical: str = key.public_key().public_bytes(*OPENSSH).decode()
    return f"{canonical} {comment}".strip()


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _security_key_line() -> str:
    """An OpenSSH FIDO (sk-ssh-ed25519) public key, in its wire format."""
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    kind = b"sk-ssh-ed25519@openssh.com"
    blob = _ssh_string(kind) + _ssh_string(raw) + _ssh_string(b"ssh:")
    return f"{kind.decode()} {base64.b64encode(blob).decode()} yubikey"


def _certificate_line() -> str:
    ca = ed25519.Ed25519PrivateKey.generate()
    user = ed25519.Ed25519PrivateKey.generate()
    cert = (
        serialization.SSHCertificateBuilder()
        .public_key(user.public_key())
        .serial(1)
        .type(serialization.SSHCertificateType.USER)
        .valid_principals([b"alice"])
        .valid_after(0)
        .valid_before(2**63)
        .sign(ca)
    )
    return cert.public_bytes().decode()


def _ssh_keygen_fingerprint(tmp_path: Path, line: str) -> str:
    path = tmp_path / "key.pub"
    path.write_text(line + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)], check=True, capture_output=True, text=True
    )
    return out.stdout.split()[1]


def _create(client: httpx.Client, project_id: str, **body: Any) -> httpx.Response:
    return client.post(f"/v1/projects/{project_id}/keypairs", json=body)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    return body


def _keypair_rows(db: Database) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(sa.select(resources).where(resources.c.kind == KEYPAIR_KIND)).mappings()
        return [dict(r) for r in rows]


@needs_ssh_keygen
def test_every_accepted_key_type_is_imported_with_ssh_keygens_fingerprint(
    api: LiveServer, tmp_path: Path
) -> None:
    keys = {
        "ssh-ed25519": ed25519.Ed25519PrivateKey.generate(),
        "ecdsa-sha2-nistp256": ec.generate_private_key(ec.SECP256R1()),
        "ecdsa-sha2-nistp384": ec.generate_private_key(ec.SECP384R1()),
        "ecdsa-sha2-nistp521": ec.generate_private_key(ec.SECP521R1()),
        "ssh-rsa": rsa.generate_private_key(65537, 2048),
    }
    with http_client(api.url, api.token) as client:
        project = create_project(client, "keys")
        for index, (key_type, key) in enumerate(keys.items()):
            line = _line(key, f"user{index}@laptop with spaces")
            response = _create(client, project, name=f"k{index}", public_key=f"  {line}\n")
            assert response.status_code == 201, response.text
            created = response.json()
            assert created["spec"] == {
                "public_key": line,  # surrounding whitespace dropped, the comment kept
                "fingerprint": _ssh_keygen_fingerprint(tmp_path, line),
                "type": key_type,
            }
            assert created["private_key"] is None and created["project_id"] == project
            assert response.headers["location"] == f"/v1/keypairs/{created['id']}"
            shown = client.get(f"/v1/keypairs/{created['id']}")
            assert shown.status_code == 200
            assert shown.json() == {k: v for k, v in created.items() if k != "private_key"}


@needs_ssh_keygen
def test_a_generated_pair_answers_its_private_key_once_and_keeps_it_nowhere(
    api: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with http_client(api.url, api.token) as client:
        project = create_project(client, "gen")
        response = _create(client, project, name="made-here", labels={"team": "web"})
        assert response.status_code == 201, response.text
        assert response.headers["cache-control"] == "no-store"
        created = response.json()
        private_key = created["private_key"]
        assert private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert created["spec"]["type"] == "ssh-ed25519" and created["labels"] == {"team": "web"}
        # the private key really belongs to the stored public key: ask OpenSSH
        key_file = tmp_path / "made-here.pem"
        key_file.write_text(private_key)
        key_file.chmod(0o600)
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(key_file)], check=True, capture_output=True, text=True
        ).stdout.split()
        assert created["spec"]["public_key"] == f"{derived[0]} {derived[1]} made-here"
        # later answers never carry it
        shown = client.get(f"/v1/keypairs/{created['id']}").json()
        listed = client.get("/v1/keypairs").json()["items"]
        assert "private_key" not in shown and all("private_key" not in k for k in listed)
    secret_lines = private_key.splitlines()[1:-1]
    with api.db.read() as conn:
        stored = json.dumps([dict(r) for r in conn.execute(sa.select(resources)).mappings()], default=str)
        audited = json.dumps(
            [dict(r) for r in conn.execute(sa.select(audit_records)).mappings()], default=str
        )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for where in (stored, audited, logged):
        assert "PRIVATE KEY" not in where and not any(line in where for line in secret_lines)


def test_refused_keys_say_why_and_write_nothing(api: LiveServer) -> None:
    ed = _line(ed25519.Ed25519PrivateKey.generate())
    cases = {
        DSA_KEY: "DSA keys are refused",
        _line(rsa.generate_private_key(65537, 1024)): "this RSA key has 1024 bits; at least 2048",
        "hello world": "'hello' is not an OpenSSH public key type",
        "ssh-ed25519": "has the type ssh-ed25519 but no key after it",
        "ssh-ed25519 AAAAnotbase64!!": "not a valid ssh-ed25519 key",
        "ssh-rsa " + ed.split()[1]: "not a valid ssh-rsa key",  # an Ed25519 key labelled RSA
        ed[:40]: "not a valid ssh-ed25519 key",  # copied only in part
        "   ": "public_key is empty",
        _certificate_line(): "certificates are refused",
        _security_key_line(): "security-key (FIDO) keys are refused",
        ed + " comment\x07bell": "comment of public_key must not contain control characters",
        f"{ed} one\n{ed} two": "must be one line",
        "---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----": "ssh-keygen -i -f",
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(): "ssh-keygen -i -m PKCS8",
        ed + " " + "é" * 8200: "longer than 16 KiB",  # under 16 Ki characters, over 16 KiB
        "x\x00y": "public_key does not start with an OpenSSH key type",
        "MIIEowIBAAKCAQEAx9f3 rest": "public_key does not start with an OpenSSH key type",
    }
    with http_client(api.url, api.token) as client:
        project = create_project(client, "refusals")
        for text, expected in cases.items():
            problem = _problem(_create(client, project, name="refused", public_key=text), 400)
            assert expected in problem["detail"], (text[:60], problem["detail"])
            assert "MIIEow" not in problem["detail"]  # text that may be a secret is never repeated
            assert problem["errors"] == [{"field": "public_key", "message": problem["detail"]}]
        too_long = _problem(_create(client, project, name="refused", public_key="x" * 16385), 422)
        assert too_long["errors"][0]["field"] == "public_key"
        assert client.get("/v1/keypairs").json()["items"] == []
    assert _keypair_rows(api.db) == []


def test_a_pasted_private_key_is_refused_without_repeating_it(api: LiveServer) -> None:
    pems = [
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        .decode(),
        rsa.generate_private_key(65537, 2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        .decode(),
    ]
    with http_client(api.url, api.token) as client:
        project = create_project(client, "oops")
        for pem in pems:
            response = _create(client, project, name="oops", public_key=pem)
            problem = _problem(response, 400)
            assert "PRIVATE key" in problem["detail"] and "ssh-keygen -y -f" in problem["detail"]
            assert not any(line in response.text for line in pem.splitlines()[1:-1])
    assert _keypair_rows(api.db) == []


def test_names_labels_and_duplicates(api: LiveServer) -> None:
    line = _line(ed25519.Ed25519PrivateKey.generate(), "me")
    with http_client(api.url, api.token) as client:
        project, other = create_project(client, "names"), create_project(client, "names-2")
        assert _create(client, project, name="laptop", public_key=line).status_code == 201
        taken = _problem(_create(client, project, name="laptop", public_key=line), 409)
        assert "named 'laptop' already exists" in taken["detail"]
        assert _create(client, other, name="laptop", public_key=line).status_code == 201  # per project
        bad_name = _problem(_create(client, project, name="-bad name", public_key=line), 400)
        assert bad_name["errors"][0]["field"] == "name"
        bad_label = _problem(_create(client, project, name="ok", public_key=line, labels={"a": "b c"}), 400)
        assert bad_label["errors"][0]["field"] == "labels.a"
        unknown = _problem(_create(client, project, name="ok", public_key=line, type="x509"), 422)
        assert unknown["errors"][0]["field"] == "type"
        assert len(client.get("/v1/keypairs", params={"project_id": project}).json()["items"]) == 1
    assert len(_keypair_rows(api.db)) == 2


def test_tenants_see_and_change_only_their_own_key_pairs(api: LiveServer) -> None:
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
        mine = [_create(ma, a, name=f"a{i}").json() for i in range(3)]
        theirs = _create(mb, b, name="b0").json()
        assert _problem(_create(ra, a, name="reader"), 403)["status"] == 403
        assert _problem(_create(mb, a, name="intruder"), 404)["status"] == 404

        first = ra.get("/v1/keypairs", params={"page_size": 2}).json()
        second = ra.get("/v1/keypairs", params={"page_size": 2, "page_token": first["next_page_token"]})
        paged = [k["id"] for k in first["items"] + second.json()["items"]]
        assert paged == [k["id"] for k in mine] and second.json()["next_page_token"] is None
        assert mb.get("/v1/keypairs").json()["items"][0]["id"] == theirs["id"]
        assert mb.get("/v1/keypairs", params={"project_id": a}).json()["items"] == []
        assert ma.get("/v1/keypairs", params={"name": "a1"}).json()["items"][0]["id"] == mine[1]["id"]

        hidden = _problem(mb.get(f"/v1/keypairs/{mine[0]['id']}"), 404)
        assert mine[0]["id"] in hidden["detail"]
        _problem(mb.delete(f"/v1/keypairs/{mine[0]['id']}"), 404)
        _problem(ra.delete(f"/v1/keypairs/{mine[0]['id']}"), 403)
        project_as_keypair = _problem(ma.get(f"/v1/keypairs/{a}"), 404)  # an id of another kind
        assert "KeyPair" in project_as_keypair["detail"]

        assert ma.delete(f"/v1/keypairs/{mine[0]['id']}").status_code == 204
        _problem(ma.get(f"/v1/keypairs/{mine[0]['id']}"), 404)
        _problem(ma.delete(f"/v1/keypairs/{mine[0]['id']}"), 404)
    assert len(_keypair_rows(api.db)) == 3


def _store_keypair(db: Database, project_id: str, name: str) -> tuple[str, str]:
    spec = generate(comment=name).spec
    with db.write() as conn:
        created = resource_store.create(
            conn,
            kind=KEYPAIR_KIND,
            name=name,
            project_id=project_id,
            labels={},
            spec=spec.model_dump(mode="json"),
            state="ACTIVE",
        )
    return created.id, spec.public_key


def test_public_keys_of_copies_the_keys_servers_are_created_with(db: Database) -> None:
    project, other = store_project(db), store_project(db)
    laptop_id, laptop = _store_keypair(db, project, "laptop")
    ci_id, ci = _store_keypair(db, project, "ci")
    elsewhere_id, _ = _store_keypair(db, other, "elsewhere")
    with db.read() as conn:
        assert public_keys_of(conn, project, []) == []
        assert public_keys_of(conn, project, ["ci", laptop_id, "laptop", ci_id]) == [ci, laptop]
        with pytest.raises(InvalidArgument) as refused:
            public_keys_of(conn, project, ["laptop", "nope", elsewhere_id, "elsewhere", "bad\x00name"])
    assert refused.value.field == "key_names"
    for missing in ("'nope'", repr(elsewhere_id), "'elsewhere'", "'bad\\x00name'"):
        assert missing in refused.value.detail
    assert "'laptop'" not in refused.value.detail
    # a server keeps its copy: deleting the key pair afterwards leaves the server's spec alone
    with db.write() as conn:
        keys = public_keys_of(conn, project, ["laptop"])
        server = resource_store.create(
            conn,
            kind="Server",
            name="web",
            project_id=project,
            labels={},
            spec={"ssh_keys": keys},
            state="ACTIVE",
        )
        resource_store.delete(conn, [laptop_id])
    with db.read() as conn:
        assert resource_store.get(conn, server.id).spec == {"ssh_keys": [laptop]}
        with pytest.raises(InvalidArgument):
            public_keys_of(conn, project, ["laptop"])


def test_parse_public_key_keeps_the_comment_and_normalises_the_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    b64 = _line(key).split()[1]
    spec = parse_public_key(f"ecdsa-sha2-nistp256\t{b64}   work key\t(2026)")
    assert spec.public_key == f"ecdsa-sha2-nistp256 {b64} work key\t(2026)"
    assert spec.fingerprint.startswith("SHA256:") and not spec.fingerprint.endswith("=")
