"""``sovra key`` and the signing and lifecycle commands of ``sovra image`` against a real API over
HTTP, on SQLite and PostgreSQL: cosign key pairs, trusted keys, signed uploads into a project that
requires them, detached signatures and bundles, and retention plans."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from sovra.cli.main import app
from sovra.images import signing
from tests.support.live_server import LiveServer
from tests.test_cli import create_project, sovra_json

runner = CliRunner()
PASSPHRASE = "correct horse battery staple"
METADATA = [
    "architecture=x86_64",
    "min_disk=1",
    "min_ram=128",
    "os_distro=debian",
    "os_version=12",
    "replace_frequency=never",
    "provided_until=none",
    "uuid_validity=forever",
    "image_source=private",
    "image_description=test image",
    "image_build_date=2026-11-20",
    "image_original_user=root",
]


def run(
    server: LiveServer | None,
    *args: str,
    password: str | None = PASSPHRASE,
    stdin: str | None = None,
) -> Result:
    """The CLI in-process; ``password`` is COSIGN_PASSWORD (None: unset, so the CLI asks on stdin)."""
    env: dict[str, str | None] = {
        "COLUMNS": None,
        "SOVRA_URL": server.url if server else None,
        "SOVRA_TOKEN": server.token if server else None,
        "SOVRA_CONFIG": "/nonexistent/sovra-test/config.json",
        "COSIGN_PASSWORD": password,
    }
    return runner.invoke(app, list(args), env=env, input=stdin)


def ok(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if result.stdout.lstrip().startswith(("{", "[")) else result.stdout


def assert_clean(result: Result, *secrets: str) -> None:
    """No traceback, and no secret on either stream."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text and not isinstance(result.exception, AssertionError)
    for secret in secrets:
        assert secret not in text
    assert "PRIVATE KEY-----" not in text


def make_keys(tmp_path: Path, prefix: str = "cosign", password: str = PASSPHRASE) -> tuple[Path, Path]:
    ok(run(None, "key", "create", "--output-prefix", str(tmp_path / prefix), password=password))
    return tmp_path / f"{prefix}.key", tmp_path / f"{prefix}.pub"


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(256 * 1024))
    return path


def new_image(server: LiveServer, project: str, name: str = "Debian 12") -> dict[str, Any]:
    create_project(server, project)
    image: dict[str, Any] = sovra_json(server, "image", "create", name, "--project", project)
    return image


def upload(server: LiveServer, image: str, version: str, path: Path, *options: str) -> Result:
    meta = [part for pair in METADATA for part in ("--meta", pair)]
    return run(server, "image", "upload", image, version, str(path), *meta, "--no-boot-test", *options)


# -- key pairs ---------------------------------------------------------------------------------------------


def test_key_create_writes_a_cosign_key_pair(tmp_path: Path) -> None:
    prefix = str(tmp_path / "cosign")
    # asked twice, hidden, on stderr: stdout holds the JSON result alone
    created = run(
        None, "key", "create", "--output-prefix", prefix, "-o", "json", password=None, stdin="pw\npw\n"
    )
    result = ok(created)
    assert_clean(created, "pw\n")
    assert created.stderr.count("Enter password for private key") == 2
    key, pub = Path(result["private_key"]), Path(result["public_key"])
    assert (key, pub) == (tmp_path / "cosign.key", tmp_path / "cosign.pub")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    public = signing.load_public_key(pub.read_bytes())
    assert result["fingerprint"] == signing.key_fingerprint(public)
    assert result["public_key_pem"] == pub.read_text()
    private = signing.load_private_key(key.read_bytes(), b"pw")
    assert signing.key_fingerprint(private.public_key()) == result["fingerprint"]
    with pytest.raises(signing.SigningKeyError):
        signing.load_private_key(key.read_bytes(), b"other")

    # existing files are never overwritten without --force
    before = key.read_bytes(), pub.read_bytes()
    again = run(None, "key", "create", "--output-prefix", prefix)
    assert again.exit_code == 2 and "already exist" in again.stderr and "--force" in again.stderr
    assert (key.read_bytes(), pub.read_bytes()) == before

    # --force replaces both, and the private key is 0600 again even if it was opened up meanwhile
    key.chmod(0o644)
    table = ok(run(None, "key", "create", "--output-prefix", prefix, "--force"))
    assert "cosign.key" in table and "0600" in table
    assert (key.read_bytes(), pub.read_bytes()) != before
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signing.load_private_key(key.read_bytes(), PASSPHRASE.encode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cosign.key", "cosign.pub"]  # no temp files

    # two different answers, or none at all: nothing is written
    other = str(tmp_path / "other")
    mismatch = run(None, "key", "create", "--output-prefix", other, password=None, stdin="one\ntwo\n")
    assert mismatch.exit_code == 2 and "do not match" in mismatch.stderr
    assert_clean(mismatch, "one", "two")
    silent = run(None, "key", "create", "--output-prefix", other, password=None, stdin="")
    assert silent.exit_code == 2 and "COSIGN_PASSWORD" in silent.stderr
    assert not list(tmp_path.glob("other*"))


def test_trust_list_distrust_round_trip(api: LiveServer, tmp_path: Path) -> None:
    key, pub = make_keys(tmp_path)
    create_project(api, "keys")
    assert ok(run(api, "key", "list", "keys", "-o", "json")) == []
    assert "No trusted signing keys." in ok(run(api, "key", "list", "keys"))

    trusted = ok(run(api, "key", "trust", "keys", str(pub), "--name", "release", "-o", "json"))
    fingerprint = signing.key_fingerprint(signing.load_public_key(pub.read_bytes()))
    assert trusted["name"] == "release" and trusted["fingerprint"] == fingerprint
    assert signing.load_public_key(trusted["public_key_pem"]) is not None
    table = ok(run(api, "key", "list", "keys"))
    assert "release" in table and trusted["id"] in table and fingerprint in table
    _, second_pub = make_keys(tmp_path, "second")
    second = ok(run(api, "key", "trust", "keys", str(second_pub), "--name", "backup", "-o", "json"))
    listed = ok(run(api, "key", "list", "keys", "-o", "json"))
    assert {k["id"] for k in listed} == {trusted["id"], second["id"]}

    # the private key is refused here, before anything is sent
    private = run(api, "key", "trust", "keys", str(key), "--name", "oops")
    assert private.exit_code == 2 and "cosign.pub" in private.stderr
    assert_clean(private)
    assert len(ok(run(api, "key", "list", "keys", "-o", "json"))) == 2

    gone = ok(run(api, "key", "distrust", trusted["id"], "-o", "json"))
    assert gone == {"id": trusted["id"], "name": None, "distrusted": True}
    assert "backup" in ok(run(api, "key", "distrust", "backup", "--project", "keys"))
    assert ok(run(api, "key", "list", "keys", "-o", "json")) == []
    missing = run(api, "key", "distrust", trusted["id"])
    assert missing.exit_code == 1 and "Not found" in missing.stderr and "sovra key list" in missing.stderr
    by_name = run(api, "key", "distrust", "release", "--project", "keys")
    assert by_name.exit_code == 1 and "no key named 'release'" in by_name.stderr


# -- signatures --------------------------------------------------------------------------------------------


def test_a_project_that_requires_signatures_takes_signed_uploads_only(
    api: LiveServer, tmp_path: Path, disk: Path
) -> None:
    key, pub = make_keys(tmp_path)
    image = new_image(api, "signed")
    project_id = image["project_id"]
    ok(run(api, "key", "trust", "signed", str(pub), "--name", "release"))
    with api.client() as client:
        patched = client.patch(f"/v1/projects/{project_id}", json={"spec": {"require_image_signature": True}})
        assert patched.status_code == 200, patched.text

    # a wrong passphrase is refused before anything is created
    wrong = run(
        api,
        "image",
        "upload",
        "Debian 12",
        "0",
        str(disk),
        *[part for pair in METADATA for part in ("--meta", pair)],
        "--sign-key",
        str(key),
        password="not it",
    )
    assert wrong.exit_code == 2 and "wrong passphrase" in wrong.stderr
    assert_clean(wrong, "not it", PASSPHRASE)
    assert sovra_json(api, "image", "versions", "Debian 12") == []

    signed = upload(api, "Debian 12", "1", disk, "--sign-key", str(key), "--wait", "-o", "json")
    operation = ok(signed)
    assert_clean(signed, PASSPHRASE)
    assert operation["state"] == "SUCCEEDED"
    version = sovra_json(api, "image", "version", "show", "Debian 12", "1")
    assert version["state"] == "active"
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    assert version["facts"]["sha256"] == digest == version["spec"]["source"]["declared_sha256"]
    [signature] = version["spec"]["signatures"]
    signing.verify_digest(signing.load_public_key(pub.read_bytes()), digest, signature)

    unsigned = upload(api, "Debian 12", "2", disk, "--wait")
    assert unsigned.exit_code == 1 and "SIGNATURE_REQUIRED" in unsigned.stderr
    assert sovra_json(api, "image", "version", "show", "Debian 12", "2")["state"] == "failed"


def test_sign_then_verify_with_keys_bundles_and_sig_files(
    api: LiveServer, tmp_path: Path, disk: Path
) -> None:
    key, pub = make_keys(tmp_path)
    _, stranger_pub = make_keys(tmp_path, "stranger", password="other")
    new_image(api, "plain")
    ok(upload(api, "Debian 12", "1", disk, "--wait"))
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()

    unsigned = run(api, "image", "verify", "Debian 12", "1")
    assert unsigned.exit_code == 1 and "carries no signature" in unsigned.stderr

    # signing needs a key the project trusts; a wrong passphrase is a usage error
    untrusted = run(api, "image", "sign", "Debian 12", "1", "--key", str(key))
    assert untrusted.exit_code == 1 and "sovra key trust" in untrusted.stderr
    ok(run(api, "key", "trust", "plain", str(pub), "--name", "release"))
    wrong = run(api, "image", "sign", "Debian 12", "1", "--key", str(key), password="nope")
    assert wrong.exit_code == 2 and "wrong passphrase" in wrong.stderr
    assert_clean(wrong, "nope", PASSPHRASE)
    prompted = run(api, "image", "sign", "Debian 12", "1", "--key", str(key), password=None, stdin="nope\n")
    assert prompted.exit_code == 2 and "wrong passphrase" in prompted.stderr

    sig = tmp_path / "disk.raw.sig"
    signed = run(
        api, "image", "sign", "Debian 12", "1", "--key", str(key), "--sig-out", str(sig), "-o", "json"
    )
    result = ok(signed)
    assert_clean(signed, PASSPHRASE)
    public = signing.load_public_key(pub.read_bytes())
    assert result["sha256"] == digest and result["key_fingerprint"] == signing.key_fingerprint(public)
    assert sig.read_text() == result["signature"]
    assert signing.verify_digest(public, digest, sig.read_text())

    # against the given key, whatever the project trusts
    bundle, exported = tmp_path / "disk.raw.sigstore.json", tmp_path / "exported.sig"
    verified = run(
        api,
        "image",
        "verify",
        "Debian 12",
        "1",
        "--key",
        str(pub),
        "--bundle-out",
        str(bundle),
        "--sig-out",
        str(exported),
    )
    assert verified.exit_code == 0, verified.output
    assert "Verified" in verified.stdout and signing.key_fingerprint(public) in verified.stdout
    fingerprint = signing.verify_bundle(bundle.read_text(), [pub.read_bytes()], digest)
    assert fingerprint == signing.key_fingerprint(public)
    assert exported.read_text() == result["signature"]

    other = run(api, "image", "verify", "Debian 12", "1", "--key", str(stranger_pub), "-o", "json")
    assert other.exit_code == 1 and "not verified" in other.stderr
    report = json.loads(other.stdout)
    assert report["valid"] is False and report["checked_by"] == "local keys"
    assert [c["valid"] for c in report["signatures"]] == [False]
    either = run(api, "image", "verify", "Debian 12", "1", "--key", str(stranger_pub), "--key", str(pub))
    assert either.exit_code == 0, either.output

    # the API's verdict; distrusting the key takes it away
    server = ok(run(api, "image", "verify", "Debian 12", "1", "-o", "json"))
    assert server["valid"] is True and server["checked_by"] == "api"
    assert server["signatures"][0]["key"] == signing.key_fingerprint(public)
    [trusted] = ok(run(api, "key", "list", "plain", "-o", "json"))
    ok(run(api, "key", "distrust", trusted["id"]))
    assert run(api, "image", "verify", "Debian 12", "1").exit_code == 1
    assert run(api, "image", "verify", "Debian 12", "1", "--key", str(pub)).exit_code == 0


# -- lifecycle ---------------------------------------------------------------------------------------------


def test_lifecycle_plan_apply_and_deprecate_promote(api: LiveServer, tmp_path: Path) -> None:
    image = new_image(api, "life")
    with api.client() as client:
        patched = client.patch(f"/v1/images/{image['id']}", json={"spec": {"retention": {"keep_last": 1}}})
        assert patched.status_code == 200, patched.text
    for version, built in (("1", "2026-01-01"), ("2", "2026-02-01")):
        path = tmp_path / f"disk{version}.raw"
        path.write_bytes(os.urandom(64 * 1024))
        ok(upload(api, "Debian 12", version, path, "--meta", f"image_build_date={built}", "--wait"))

    plan = ok(run(api, "image", "lifecycle", "Debian 12", "-o", "json"))
    [action] = plan["actions"]
    assert (action["version"], action["current"], action["target"]) == ("1", "active", "deprecated")
    assert "keeps its 1 newest" in action["reason"] and action["affected_servers"] == []
    table = run(api, "image", "lifecycle", "Debian 12")
    assert table.exit_code == 0, table.output
    for text in ("VERSION", "NOW", "NEXT", "AFFECTED SERVERS", "deprecated", "superseded", "none"):
        assert text in table.stdout
    assert "--apply" in table.stderr
    assert sovra_json(api, "image", "version", "show", "Debian 12", "1")["state"] == "active"

    applied = run(api, "image", "lifecycle", "Debian 12", "--apply")
    assert applied.exit_code == 0 and "Applied" in applied.stdout, applied.output
    assert sovra_json(api, "image", "version", "show", "Debian 12", "1")["state"] == "deprecated"
    assert ok(run(api, "image", "lifecycle", "Debian 12", "-o", "json"))["actions"] == []
    assert "Nothing to do" in ok(run(api, "image", "lifecycle", "Debian 12"))

    promoted = ok(run(api, "image", "promote", "Debian 12", "1", "-o", "json"))
    assert promoted["state"] == "active" and promoted["spec"]["version"] == "1"
    deprecated = ok(run(api, "image", "deprecate", "Debian 12", "2"))
    assert "Version Debian 12:2 is deprecated." in deprecated
    again = run(api, "image", "deprecate", "Debian 12", "2")
    assert again.exit_code == 1 and "cannot go from deprecated to deprecated" in again.stderr
    assert "only an active version can be deprecated" in again.stderr
    assert "is active" in ok(run(api, "image", "promote", "Debian 12", "2"))
    assert sovra_json(api, "image", "version", "show", "Debian 12", "2")["state"] == "active"
