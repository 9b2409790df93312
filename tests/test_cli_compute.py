"""``sovra keypair``, ``sovra server-group`` and ``sovra host`` against a real API over HTTP, on
SQLite and PostgreSQL. Hosts are libvirt's own ``test:///default`` driver."""

from __future__ import annotations

import io
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from rich.console import Console
from typer.testing import Result

from sovra.cli.client import CliError, SovraClient
from sovra.cli.hosts import host_table, wait_for_inventory
from sovra.cli.output import OutputFormat
from sovra.domain.edges import EdgeType
from sovra.domain.identity import Role
from sovra.store import resources as resource_store
from tests.support.databases import sqlite_database_url
from tests.support.live_server import LiveServer, live_server
from tests.support.principals import store_edge, store_resource, store_token
from tests.test_cli import create_project, sovra, sovra_json

database_url = sqlite_database_url  # the CLI is the same on both backends; the API tests cover those

TEST_URI = "test:///default"
OPENSSH = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH


@pytest.fixture
def idle_api(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """A real API with no worker: a host's inventory read stays PENDING."""
    with live_server(database_url, tmp_path / "data", workers=0) as server:
        yield server


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def failed(result: Result, code: int, *said: str) -> Result:
    assert result.exit_code == code, result.output
    for text in said:
        assert text in result.stderr, (text, result.stderr)
    assert "Traceback" not in result.output
    return result


# -- key pairs ---------------------------------------------------------------------------------------------


def test_a_generated_key_pair_leaves_its_private_key_in_a_new_file_only(
    api: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    create_project(api, "demo")
    made = ok(sovra(api, "keypair", "create", "laptop", "--project", "demo"))
    key_file = tmp_path / "laptop.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    private_key = key_file.read_text()
    assert private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert "PRIVATE KEY" not in made.stdout and "laptop.pem" in made.stderr and "only copy" in made.stderr
    assert "SHA256:" in made.stdout

    as_json = sovra_json(api, "keypair", "create", "ci", "-p", "demo", "--private-key-file", "ci-key")
    assert as_json["private_key_file"] == "ci-key" and "private_key" not in as_json
    assert (tmp_path / "ci-key").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    # the file holds the private half of the key the API keeps
    derived = serialization.load_ssh_private_key(private_key.encode(), None).public_key()
    laptop = sovra_json(api, "keypair", "show", "laptop")
    assert laptop["spec"]["public_key"] == f"{derived.public_bytes(*OPENSSH).decode()} laptop"


def test_a_private_key_file_is_never_overwritten_and_a_refusal_leaves_no_file(
    api: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    create_project(api, "demo")
    existing = tmp_path / "mine.pem"
    existing.write_text("precious")
    refused = failed(
        sovra(api, "keypair", "create", "other", "-p", "demo", "--private-key-file", str(existing)),
        2,
        "already exists; it was not overwritten and no key pair was created",
        "--private-key-file",
    )
    assert existing.read_text() == "precious" and refused.stdout == ""

    first = tmp_path / "first.pem"
    ok(sovra(api, "keypair", "create", "taken", "-p", "demo", "--private-key-file", str(first)))
    duplicate = tmp_path / "duplicate.pem"
    failed(
        sovra(api, "keypair", "create", "taken", "-p", "demo", "--private-key-file", str(duplicate)),
        1,
        "named 'taken' already exists",
    )
    assert not duplicate.exists()
    missing_dir = tmp_path / "no-such-dir" / "key.pem"
    failed(
        sovra(api, "keypair", "create", "k2", "-p", "demo", "--private-key-file", str(missing_dir)),
        2,
        "cannot create",
        "no key pair was created",
    )
    failed(sovra(api, "keypair", "create", "../up", "-p", "demo"), 2, "name '../up' is invalid")
    assert not (tmp_path.parent / "up.pem").exists()
    assert [k["name"] for k in sovra_json(api, "keypair", "list")] == ["taken"]


def test_import_list_show_and_delete_key_pairs(api: LiveServer, tmp_path: Path) -> None:
    create_project(api, "demo")
    other = create_project(api, "other")
    private = ed25519.Ed25519PrivateKey.generate()
    public_file = tmp_path / "id_ed25519.pub"
    line = (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    public_file.write_text(f"{line} me@laptop\n")
    imported = sovra_json(
        api, "keypair", "create", "laptop", "-p", "demo", "--public-key-file", str(public_file)
    )
    assert imported["spec"]["public_key"] == f"{line} me@laptop" and imported["private_key"] is None
    sovra_json(api, "keypair", "create", "laptop", "-p", other["id"], "--public-key-file", str(public_file))

    listed = ok(sovra(api, "keypair", "list"))
    assert listed.stdout.count("laptop") == 2 and imported["spec"]["fingerprint"] in listed.stdout
    assert [k["project_id"] for k in sovra_json(api, "keypair", "list", "-p", "other")] == [other["id"]]
    ambiguous = failed(sovra(api, "keypair", "show", "laptop"), 2, "2 key pairs are named 'laptop'")
    assert "--project" in ambiguous.stderr
    shown = ok(sovra(api, "keypair", "show", "laptop", "-p", "demo"))
    assert imported["id"] in shown.stdout and "me@laptop" in shown.stdout
    assert sovra_json(api, "keypair", "show", imported["id"])["id"] == imported["id"]
    failed(sovra(api, "keypair", "show", "nope"), 1, "no key pair is named 'nope'", "sovra keypair list")

    deleted = ok(sovra(api, "keypair", "delete", "laptop", "-p", "demo"))
    assert f"Deleted key pair laptop ({imported['id']})" in deleted.stdout
    assert "keep their copy" in deleted.stderr
    assert [k["project_id"] for k in sovra_json(api, "keypair", "list")] == [other["id"]]


def test_bad_public_key_files_are_refused_before_anything_is_sent(api: LiveServer, tmp_path: Path) -> None:
    create_project(api, "demo")
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        .decode()
    )
    private_file = tmp_path / "id_ed25519"
    private_file.write_text(pem)
    result = failed(
        sovra(api, "keypair", "create", "oops", "-p", "demo", "--public-key-file", str(private_file)),
        2,
        "PRIVATE key",
        "nothing was sent",
    )
    assert not any(line in result.output for line in pem.splitlines()[1:-1])
    binary = tmp_path / "binary.pub"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    failed(
        sovra(api, "keypair", "create", "bin", "-p", "demo", "--public-key-file", str(binary)),
        2,
        "is not text",
    )
    both = sovra(
        api,
        "keypair",
        "create",
        "x",
        "-p",
        "demo",
        "--public-key-file",
        str(binary),
        "--private-key-file",
        "x",
    )
    failed(both, 2, "--private-key-file is for generated pairs")
    failed(sovra(api, "keypair", "create", "x", "-p", "demo", "--public-key-file", "/nonexistent.pub"), 2)
    assert sovra_json(api, "keypair", "list") == []


# -- server groups -----------------------------------------------------------------------------------------


def test_server_group_commands(api: LiveServer) -> None:
    project = create_project(api, "demo")
    group = sovra_json(api, "server-group", "create", "web", "--policy", "anti-affinity", "-p", "demo")
    assert group["spec"] == {"policy": "anti-affinity"} and group["members"] == []
    failed(
        sovra(api, "server-group", "create", "x", "--policy", "sideways", "-p", "demo"),
        2,
        "'sideways' is not one of",
    )
    failed(sovra(api, "server-group", "create", "x", "-p", "demo"), 2, "--policy")

    server = store_resource(api.db, project["id"])
    store_edge(api.db, server, EdgeType.USES, group["id"])
    listed = ok(sovra(api, "server-group", "list"))
    assert "web" in listed.stdout and "anti-affinity" in listed.stdout
    shown = ok(sovra(api, "server-group", "show", "web"))
    assert server in shown.stdout and "Members" in shown.stdout
    assert [m["id"] for m in sovra_json(api, "server-group", "show", group["id"])["members"]] == [server]

    failed(
        sovra(api, "server-group", "delete", "web"),
        1,
        "still has 1 member(s)",
        "delete its servers first",
        f"({server})",
    )
    with api.db.write() as conn:
        resource_store.delete(conn, [server])
    assert "No members." in ok(sovra(api, "server-group", "show", "web", "-p", "demo")).stdout
    deleted = ok(sovra(api, "server-group", "delete", "web"))
    assert f"Deleted server group web ({group['id']})" in deleted.stdout
    assert sovra_json(api, "server-group", "list") == []
    failed(sovra(api, "server-group", "show", "web"), 1, "no server group is named 'web'")


# -- hosts -------------------------------------------------------------------------------------------------


def test_host_lifecycle_on_libvirts_test_driver(api: LiveServer) -> None:
    host = sovra_json(
        api, "host", "register", "h1", TEST_URI, "--cpu-ratio", "2", "--ram-ratio", "1.5", "--wait"
    )
    assert host["state"] == "enabled" and host["spec"]["allocation_ratios"] == {
        "cpu": 2.0,
        "ram": 1.5,
        "disk": 1.0,
    }
    inventory = host["inventory"]
    assert host["capacity"]["vcpus"] == 2 * inventory["cpus"]
    assert host["capacity"]["memory_mib"] == int(inventory["memory_mib"] * 1.5)

    listed = ok(sovra(api, "host", "list")).stdout
    for text in ("h1", "enabled", inventory["accelerator"], str(host["capacity"]["vcpus"])):
        assert text in listed
    shown = ok(sovra(api, "host", "show", "h1")).stdout
    assert TEST_URI in shown and inventory["cpu_model"] in shown and "cpu 2, ram 1.5, disk 1" in shown
    assert sovra_json(api, "host", "show", host["id"])["id"] == host["id"]

    for command, state in (("disable", "disabled"), ("maintenance", "maintenance"), ("enable", "enabled")):
        changed = sovra_json(api, "host", command, "h1")
        assert changed["state"] == state and changed["spec"]["admin_state"] == state
        assert changed["spec"]["allocation_ratios"]["cpu"] == 2.0  # the rest of the spec is kept

    refreshed = sovra_json(api, "host", "refresh", "h1", "--wait")
    assert refreshed["state"] == "enabled" and refreshed["last_seen"] >= host["last_seen"]
    operation = sovra_json(api, "host", "refresh", host["id"])
    assert operation["verb"] == "host.refresh" and operation["target_id"] == host["id"]
    ok(sovra(api, "op", "wait", operation["id"]))

    server = store_resource(api.db, None)
    store_edge(api.db, server, EdgeType.RUNS_ON, host["id"])
    failed(
        sovra(api, "host", "delete", "h1"), 1, "still runs 1 server(s)", "move or delete its servers first"
    )
    with api.db.write() as conn:
        resource_store.delete(conn, [server])
    assert f"Deleted host h1 ({host['id']})" in ok(sovra(api, "host", "delete", "h1")).stdout
    assert sovra_json(api, "host", "list") == []
    failed(sovra(api, "host", "show", "h1"), 1, "no host is named 'h1'", "sovra host list")


def test_host_registration_errors_say_what_is_wrong(api: LiveServer) -> None:
    failed(sovra(api, "host", "register", "h1", "http://evil/"), 1, "spec.uri", "must be a libvirt URI")
    failed(
        sovra(api, "host", "register", "h1", "qemu+ssh://root@hv1/system"),
        1,
        "libvirt transport 'qemu+ssh' is not allowed here",
    )
    failed(sovra(api, "host", "register", "h1", TEST_URI, "--cpu-ratio", "0"), 1, "allocation_ratios.cpu")
    assert sovra_json(api, "host", "list") == []
    member = store_token(api.db, create_project(api, "tenant")["id"], Role.MEMBER)
    refused = sovra(api, "host", "list", env={"SOVRA_TOKEN": member.secret})
    failed(refused, 1, "Forbidden", "admin")


def test_waiting_for_an_unreachable_host_ends_with_what_to_do(api: LiveServer) -> None:
    uri = "qemu:///system?socket=/nonexistent/libvirt-sock"
    result = sovra(api, "host", "register", "gone", uri, "--wait")
    failed(
        result,
        1,
        "HOST_UNREACHABLE",
        f"check that the workers reach libvirt at {uri}",
        "sovra host show gone",
    )
    assert sovra_json(api, "host", "show", "gone")["state"] == "down"


def test_waiting_times_out_and_shows_progress_on_a_terminal(idle_api: LiveServer) -> None:
    timed_out = sovra(idle_api, "host", "register", "slow", TEST_URI, "--wait", "--timeout", "0.3")
    failed(timed_out, 3, "still PENDING (0%) after 0.3s", "sovra op wait")
    host = sovra_json(idle_api, "host", "show", "slow")
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    with SovraClient(idle_api.url, idle_api.token) as client, pytest.raises(CliError) as raised:
        wait_for_inventory(client, host, host["operation_id"], 0.5, OutputFormat.TABLE, display=terminal)
    assert raised.value.exit_code == 3
    assert "host.refresh PENDING" in screen.getvalue() and "0%" in screen.getvalue()
    busy = sovra(idle_api, "host", "delete", "slow")
    failed(busy, 1, f"operation {host['operation_id']} is running", f"sovra op wait {host['operation_id']}")
    started = sovra(idle_api, "host", "register", "later", TEST_URI)
    assert "sovra op wait" in ok(started).stderr and "registering" in started.stdout


def test_the_host_list_shows_usage_when_the_api_reports_it(api: LiveServer) -> None:
    host: dict[str, Any] = sovra_json(api, "host", "register", "h1", TEST_URI, "--wait")
    vcpus, memory = host["capacity"]["vcpus"], host["capacity"]["memory_mib"]
    assert host["usage"]["vcpus"] == 0  # nothing placed on it yet
    listed = ok(sovra(api, "host", "list")).stdout
    assert f"0/{vcpus}" in listed
    busy = {**host, "usage": {"vcpus": 3, "memory_mib": 1024, "disk_gib": 0, "servers": 2}}
    without_usage = {k: v for k, v in host.items() if k != "usage"}  # an API from before usage
    screen = io.StringIO()
    Console(file=screen, width=200).print(host_table([busy, without_usage]))
    rows = [line for line in screen.getvalue().splitlines() if "h1" in line]
    assert f" 3/{vcpus} " in rows[0] and f"1.0 GiB/{memory / 1024:.1f} GiB" in rows[0]
    assert f" {vcpus} " in rows[1] and "/" not in rows[1].split("test:")[0]
