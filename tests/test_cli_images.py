"""``sovra image`` against a real API over HTTP, on SQLite and PostgreSQL: image lines, streamed
uploads (refusals included), URL imports, verified downloads, and local builds."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from sovra.cli import images
from sovra.cli.client import CliError
from sovra.domain.image import ScsMetadata
from sovra.images.inspection import inspect_file
from tests.support import crafted_images as crafted
from tests.support.guest_images import cache_root
from tests.support.live_server import LiveServer, live_server
from tests.test_cli import create_project, sovra, sovra_json

METADATA_YAML = """\
architecture: x86_64
min_disk: 1
min_ram: 128
os_distro: debian
os_version: 12              # a number to YAML; the CLI sends it as the text it is
replace_frequency: never
provided_until: 2030-06-30  # a date to YAML
uuid_validity: forever
image_source: private
image_description: test image
image_build_date: 2026-11-20
image_original_user: root
"""
TERMINAL = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}  # Rich then treats stderr as a terminal
BAR = "━"


@pytest.fixture
def metadata_file(tmp_path: Path) -> Path:
    path = tmp_path / "metadata.yaml"
    path.write_text(METADATA_YAML)
    return path


@pytest.fixture
def raw_disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(1024 * 1024) + b"\0" * (3 * 1024 * 1024))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def new_image(server: LiveServer, name: str = "Debian 12", project: str = "images") -> dict[str, Any]:
    create_project(server, project)
    image: dict[str, Any] = sovra_json(server, "image", "create", name, "--project", project)
    return image


def upload(
    server: LiveServer, image: str, version: str, path: Path, metadata: Path, *options: str, **kw: Any
) -> Any:
    return sovra(
        server, "image", "upload", image, version, str(path), "--metadata", str(metadata), *options, **kw
    )


def show_version(server: LiveServer, image: str, version: str) -> dict[str, Any]:
    shown: dict[str, Any] = sovra_json(server, "image", "version", "show", image, version)
    return shown


def test_create_list_show_and_delete(api: LiveServer) -> None:
    create_project(api, "ops")
    created = sovra_json(
        api, "image", "create", "Debian 12", "-p", "ops", "-d", "bookworm", "-l", "os=debian", "--public"
    )
    assert created["name"] == "Debian 12" and created["labels"] == {"os": "debian"}
    assert created["spec"]["description"] == "bookworm" and created["spec"]["visibility"] == "public"

    listed = sovra(api, "image", "list")
    assert listed.exit_code == 0, listed.output
    assert "Debian 12" in listed.stdout and created["id"] in listed.stdout and "os=debian" in listed.stdout
    assert [i["id"] for i in sovra_json(api, "image", "list", "--selector", "os=debian")] == [created["id"]]
    assert sovra_json(api, "image", "list", "--selector", "os=suse") == []
    assert [i["id"] for i in sovra_json(api, "image", "list", "--project", "ops")] == [created["id"]]

    assert sovra_json(api, "image", "show", "Debian 12") == created
    assert sovra_json(api, "image", "show", created["id"]) == created
    shown = sovra(api, "image", "show", "Debian 12")
    assert shown.exit_code == 0 and "bookworm" in shown.stdout and "No versions." in shown.stdout

    # the same name in a second project: a name alone is ambiguous, --project or the id settle it
    create_project(api, "dev")
    other = sovra_json(api, "image", "create", "Debian 12", "--project", "dev")
    ambiguous = sovra(api, "image", "show", "Debian 12")
    assert ambiguous.exit_code == 2
    assert "2 images are named 'Debian 12'" in ambiguous.stderr and "--project" in ambiguous.stderr
    assert sovra_json(api, "image", "show", "Debian 12", "--project", "dev")["id"] == other["id"]

    missing = sovra(api, "image", "show", "Ubuntu")
    assert missing.exit_code == 1 and "no image is named 'Ubuntu'" in missing.stderr

    deleted = sovra(api, "image", "delete", "Debian 12", "--project", "dev", "-o", "json")
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(deleted.stdout)["id"] == other["id"]
    assert [i["id"] for i in sovra_json(api, "image", "list")] == [created["id"]]


def test_raw_upload_is_converted_and_activated(api: LiveServer, raw_disk: Path, metadata_file: Path) -> None:
    image = new_image(api)
    result = upload(
        api,
        "Debian 12",
        "20261120",
        raw_disk,
        metadata_file,
        "--format",
        "raw",
        "--verify-sha256",
        "--meta",
        "hw_rng_model=virtio",
        "--meta",
        "min_disk=2",
        "--no-boot-test",
        "--wait",
        "--output",
        "json",
    )
    assert result.exit_code == 0, result.output
    operation = json.loads(result.stdout)  # stdout is the operation alone: notes went to stderr
    assert operation["state"] == "SUCCEEDED" and operation["verb"] == "image.prepare"
    assert [s["name"] for s in operation["steps"]] == ["convert", "boot-test", "promote"]
    assert "Created version Debian 12:20261120" in result.stderr

    version = show_version(api, image["id"], "20261120")
    assert version["id"] == operation["target_id"] and version["state"] == "active"
    facts, spec = version["facts"], version["spec"]
    assert (facts["source_format"], facts["disk_format"]) == ("raw", "qcow2")
    assert facts["sha256"] == sha256(raw_disk) == spec["source"]["declared_sha256"]
    assert spec["boot_test"]["enabled"] is False
    metadata = spec["metadata"]
    assert (metadata["os_version"], metadata["provided_until"], metadata["min_disk"]) == (
        "12",
        "2030-06-30",
        2,
    )
    assert metadata["hw_rng_model"] == "virtio"

    table = sovra(api, "image", "versions", "Debian 12")
    assert table.exit_code == 0, table.output
    assert "20261120" in table.stdout and "raw→qcow2" in table.stdout and "active" in table.stdout
    assert sha256(raw_disk)[:12] in table.stdout and "4.0 MiB" in table.stdout
    panel = sovra(api, "image", "version", "show", "Debian 12", version["id"])
    assert panel.exit_code == 0 and facts["disk_blob"] in panel.stdout and "hw_rng_model" in panel.stdout


def test_download_round_trip_with_verification_and_ranges(
    api: LiveServer, raw_disk: Path, metadata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = new_image(api)
    uploaded = upload(api, image["id"], "1", raw_disk, metadata_file, "--no-boot-test", "--wait")
    assert uploaded.exit_code == 0, uploaded.output
    disk_blob = show_version(api, image["id"], "1")["facts"]["disk_blob"]

    whole = tmp_path / "down" / "disk.qcow2"
    whole.parent.mkdir()
    got = sovra_json(api, "image", "download", "Debian 12", "1", str(whole))
    content = whole.read_bytes()
    assert content[:4] == b"QFI\xfb" and sha256(whole) == disk_blob
    assert got["verified"] is True and got["sha256"] == disk_blob and got["size"] == len(content)
    assert list(whole.parent.iterdir()) == [whole]  # no .part left behind
    table = sovra(api, "image", "download", "Debian 12", "1", str(whole))
    assert table.exit_code == 0 and "sha256 verified" in table.stdout

    part = tmp_path / "bytes.bin"
    ranged = sovra_json(api, "image", "download", "Debian 12", "1", str(part), "--range", "4-11")
    assert part.read_bytes() == content[4:12]
    assert ranged["verified"] is False and ranged["content_range"] == f"bytes 4-11/{len(content)}"
    sovra_json(api, "image", "download", "Debian 12", "1", str(part), "--range", "-4")
    assert part.read_bytes() == content[-4:]
    outside = sovra(api, "image", "download", "Debian 12", "1", str(part), "--range", f"{len(content)}-")
    assert outside.exit_code == 1 and "outside" in outside.stderr
    backwards = sovra(api, "image", "download", "Debian 12", "1", str(part), "--range", "9-3")
    assert backwards.exit_code == 2 and "'9-3'" in backwards.stderr

    # bytes that do not hash to what the API announced are thrown away
    monkeypatch.setattr(images, "served_digest", lambda response, version: "0" * 64)
    corrupt = tmp_path / "corrupt.qcow2"
    refused = sovra(api, "image", "download", "Debian 12", "1", str(corrupt))
    assert refused.exit_code == 1 and "not 0000" in refused.stderr and "was removed" in refused.stderr
    assert not corrupt.exists() and not corrupt.with_name("corrupt.qcow2.part").exists()


def test_hostile_qcow2_is_refused_with_its_check(
    api: LiveServer, tmp_path: Path, metadata_file: Path
) -> None:
    image = new_image(api)
    hostile = crafted.qcow2_with_backing_file(tmp_path)
    result = upload(api, image["id"], "1", hostile, metadata_file, "--format", "qcow2", "--no-boot-test")
    assert result.exit_code == 1, result.output
    assert "Image rejected (422)" in result.stderr and "backing file" in result.stderr
    assert "code: UNSAFE_IMAGE" in result.stderr and "check: backing_file" in result.stderr
    assert "sovra image version delete 'Debian 12' 1" in result.stderr
    version = show_version(api, image["id"], "1")
    assert version["state"] == "failed" and version["facts"]["failure_reason"].startswith("UNSAFE_IMAGE")

    # the failed version holds the image until it is deleted
    kept = sovra(api, "image", "delete", "Debian 12")
    assert kept.exit_code == 1 and "Debian 12:1" in kept.stderr and "delete its versions first" in kept.stderr
    assert sovra(api, "image", "version", "delete", "Debian 12", "1").exit_code == 0
    assert sovra(api, "image", "delete", "Debian 12").exit_code == 0


def test_declared_checksum_mismatch_is_refused(api: LiveServer, raw_disk: Path, metadata_file: Path) -> None:
    image = new_image(api)
    result = upload(api, image["id"], "1", raw_disk, metadata_file, "--sha256", "0" * 64, "--no-boot-test")
    assert result.exit_code == 1, result.output
    assert "code: CHECKSUM_MISMATCH" in result.stderr and sha256(raw_disk) in result.stderr
    assert "check:" not in result.stderr  # no empty extension lines
    assert show_version(api, image["id"], "1")["state"] == "failed"

    again = upload(api, image["id"], "1", raw_disk, metadata_file)
    assert (
        again.exit_code == 1 and "Conflict (409)" in again.stderr and "sovra image versions" in again.stderr
    )


def test_missing_metadata_is_named_by_the_api(api: LiveServer, raw_disk: Path) -> None:
    image = new_image(api)
    result = sovra(api, "image", "upload", image["id"], "1", str(raw_disk), "--meta", "architecture=x86_64")
    assert result.exit_code == 1
    assert "field metadata.min_disk" in result.stderr and "--metadata FILE" in result.stderr
    assert sovra_json(api, "image", "versions", image["id"]) == []
    # with --verify-sha256 the file would be hashed first: the CLI checks the version before that
    early = sovra(api, "image", "upload", image["id"], "1", str(raw_disk), "--verify-sha256")
    assert early.exit_code == 2 and "metadata.min_disk" in early.stderr and "Hashing" not in early.stderr


def test_usage_errors_name_the_bad_value(raw_disk: Path, tmp_path: Path, metadata_file: Path) -> None:
    """All refused before anything is sent (no API runs here)."""
    broken, listed = tmp_path / "broken.yaml", tmp_path / "listed.yaml"
    broken.write_text("architecture: [x86_64\n")
    listed.write_text("- architecture\n")
    base = ("image", "upload", "img", "1", str(raw_disk))
    cases: list[tuple[tuple[str, ...], list[str]]] = [
        (("--meta", "novalue"), ["'novalue'", "KEY=VALUE"]),
        (("--meta", "=x"), ["'=x'"]),
        (("--metadata", str(tmp_path / "absent.yaml")), ["absent.yaml", "does not exist"]),
        (("--metadata", str(broken)), ["broken.yaml", "--metadata"]),
        (("--metadata", str(listed)), ["listed.yaml", "not a mapping"]),
        (("--format", "qcow3"), ["'qcow3'", "not a disk format"]),
        (("--sha256", "abc"), ["'abc'", "SHA-256"]),
        (("--sha256", "a" * 64, "--verify-sha256"), ["not both"]),
        (("--boot-marker", "login:("), ["'login:('", "regular expression"]),
    ]
    for options, expected in cases:
        result = sovra(None, *base, "--metadata", str(metadata_file), *options)
        assert result.exit_code == 2, (options, result.output)
        for text in expected:
            assert text in result.stderr, (options, result.stderr)
    missing = sovra(None, "image", "upload", "img", "1", str(tmp_path / "nothing.raw"))
    assert missing.exit_code == 2 and "nothing.raw" in missing.stderr
    bad_range = sovra(None, "image", "download", "img", "1", str(tmp_path / "x"), "--range", "bytes")
    assert bad_range.exit_code == 2 and "'bytes'" in bad_range.stderr


def test_progress_bars_on_a_terminal_and_none_in_json(
    api: LiveServer, raw_disk: Path, metadata_file: Path, tmp_path: Path
) -> None:
    image = new_image(api)
    shown = upload(api, image["id"], "1", raw_disk, metadata_file, "--no-boot-test", "--wait", env=TERMINAL)
    assert shown.exit_code == 0, shown.output
    assert "Uploading disk.raw" in shown.stderr and "4.0/4.0 MiB" in shown.stderr and BAR in shown.stderr
    assert "Version Debian 12:1 is" in shown.stdout

    quiet = upload(
        api, image["id"], "2", raw_disk, metadata_file, "--no-boot-test", "--wait", "-o", "json", env=TERMINAL
    )
    assert quiet.exit_code == 0, quiet.output
    assert json.loads(quiet.stdout)["state"] == "SUCCEEDED"
    assert "Uploading" not in quiet.stderr and BAR not in quiet.stderr and "\x1b" not in quiet.stderr

    target = tmp_path / "disk.qcow2"
    down = sovra(api, "image", "download", image["id"], "1", str(target), env=TERMINAL)
    assert down.exit_code == 0 and "Downloading Debian 12:1" in down.stderr and BAR in down.stderr
    down_json = sovra(api, "image", "download", image["id"], "1", str(target), "-o", "json", env=TERMINAL)
    assert (
        down_json.exit_code == 0 and BAR not in down_json.stderr and json.loads(down_json.stdout)["verified"]
    )


def test_connection_cut_during_upload_reports_the_verdict(
    api: LiveServer, tmp_path: Path, raw_disk: Path, metadata_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API may close the connection as soon as it refuses the first MiB; the CLI then reads the
    verdict the API recorded on the version instead of reporting a bare connection error."""
    image = new_image(api)
    hostile = crafted.qcow2_with_backing_file(tmp_path)
    assert upload(api, image["id"], "refused", hostile, metadata_file).exit_code == 1
    refused = show_version(api, image["id"], "refused")

    def cut_off(*args: Any) -> Any:
        raise httpx.WriteError("[Errno 104] Connection reset by peer")

    monkeypatch.setattr(images, "_send_file", cut_off)
    with images.TransferClient(api.url, api.token) as client:
        with pytest.raises(CliError) as verdict:
            images.upload_file(client, refused, hostile, None)
        assert verdict.value.exit_code == 1
        assert verdict.value.message.startswith("the API refused the image: UNSAFE_IMAGE")

        with api.client() as http:  # a version still waiting for its bytes
            body = {"version": "fresh", "metadata": refused["spec"]["metadata"]}
            fresh = http.post(f"/v1/images/{image['id']}/versions", json=body).json()
        with pytest.raises(CliError) as interrupted:
            images.upload_file(client, fresh, raw_disk, None)
        assert "was interrupted" in interrupted.value.message and "reset by peer" in interrupted.value.message


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    def server_bind(self) -> None:  # no reverse lookup of the address
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = "127.0.0.1", self.socket.getsockname()[1]


@contextmanager
def file_server(directory: Path) -> Iterator[int]:
    """A plain HTTP mirror of ``directory`` on a free loopback port."""
    server = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror(database_url: str, tmp_path: Path, raw_disk: Path) -> Iterator[tuple[LiveServer, str]]:
    """An API allowed to import from a local HTTP mirror, and the URL of ``raw_disk`` there."""
    directory = tmp_path / "mirror"
    directory.mkdir()
    (directory / "disk.raw").write_bytes(raw_disk.read_bytes())
    with (
        file_server(directory) as port,
        live_server(
            database_url,
            tmp_path / "data",
            import_allowed_networks=["127.0.0.0/8"],
            import_allowed_ports=[port],
        ) as server,
    ):
        yield server, f"http://127.0.0.1:{port}/disk.raw"


def test_import_from_a_url(mirror: tuple[LiveServer, str], raw_disk: Path, metadata_file: Path) -> None:
    server, source = mirror
    image = new_image(server)
    options = ("--metadata", str(metadata_file), "--format", "raw", "--no-boot-test")
    started = sovra_json(server, "image", "import", image["id"], "1", source, *options)
    assert started["verb"] == "image.import"
    done = sovra(server, "op", "wait", started["id"], "-o", "json")
    assert done.exit_code == 0, done.output
    version = show_version(server, image["id"], "1")
    assert version["id"] == started["target_id"] and version["state"] == "active"
    assert version["facts"]["sha256"] == sha256(raw_disk)
    assert version["spec"]["source"] == {
        "type": "url",
        "url": source,
        "declared_format": "raw",
        "declared_sha256": None,
    }

    waited = sovra(server, "image", "import", "Debian 12", "2", source, *options, "--wait")
    assert waited.exit_code == 0, waited.output
    assert "Importing http://127.0.0.1" in waited.stderr and "Version Debian 12:2 is active." in waited.stdout


def test_a_refused_import_names_the_check(mirror: tuple[LiveServer, str], metadata_file: Path) -> None:
    server, source = mirror
    image = new_image(server)
    options = ("--metadata", str(metadata_file), "--no-boot-test", "--sha256", "1" * 64, "--wait")
    waited = sovra(server, "image", "import", image["id"], "1", source, *options)
    assert waited.exit_code == 1
    assert show_version(server, image["id"], "1")["state"] == "failed"
    assert "CHECKSUM_MISMATCH" in waited.stderr


def test_build_writes_a_qcow2_the_inspector_accepts(tmp_path: Path) -> None:
    target = tmp_path / "tiny.qcow2"
    result = sovra(
        None, "image", "build", "--file", str(target), "-o", "json", env={"SOVRA_CACHE": str(cache_root())}
    )
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    assert built["path"] == str(target) and built["sha256"] == sha256(target)
    inspected = inspect_file(target, "qcow2")
    assert inspected.format == "qcow2" and inspected.virtual_size == built["virtual_size"]
    assert ScsMetadata.model_validate(built["metadata"]).os_distro == "sovra-tiny"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # one build is enough
def test_build_and_upload_with_the_suggested_metadata(api: LiveServer, tmp_path: Path) -> None:
    image = new_image(api, "Tiny")
    target = tmp_path / "tiny.qcow2"
    result = sovra(
        api,
        "image",
        "build",
        "--file",
        str(target),
        "--upload",
        "Tiny",
        "1.0",
        "--no-boot-test",
        "--wait",
        "-o",
        "json",
        env={"SOVRA_CACHE": str(cache_root())},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "SUCCEEDED" and "Built " in result.stderr
    version = show_version(api, image["id"], "1.0")
    assert version["state"] == "active" and version["spec"]["metadata"]["os_distro"] == "sovra-tiny"
    assert version["facts"]["sha256"] == sha256(target) == version["spec"]["source"]["declared_sha256"]
    assert version["facts"]["disk_blob"] == version["facts"]["source_blob"]  # qcow2 already: no conversion


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a VM boot per backend is too slow
def test_a_bootable_image_passes_its_boot_test(
    api: LiveServer, tiny_image: Path, metadata_file: Path
) -> None:
    image = new_image(api)
    result = upload(
        api, image["id"], "tiny", tiny_image, metadata_file, "--format", "qcow2", "--wait", "--timeout", "300"
    )
    assert result.exit_code == 0, result.output
    assert "Version Debian 12:tiny is active." in result.stdout
    version = show_version(api, image["id"], "tiny")
    assert version["state"] == "active" and version["spec"]["boot_test"]["enabled"] is True
    assert "login:" in version["facts"]["boot_log_tail"]
