"""``sovra server`` against a real API over HTTP, on SQLite and PostgreSQL, with servers on a
``fake://`` host: create (waiting or not), list, show, power actions, console, delete, and the
errors a wrong flavor or image gives."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sovra.cli import servers
from sovra.cli.servers import age, new_output
from tests.support.compute import project, register_host, succeeded, upload
from tests.support.databases import sqlite_database_url
from tests.support.live_server import LiveServer, live_server
from tests.test_cli import sovra, sovra_json, worker_for
from tests.test_cli_images import TERMINAL as TERMINAL_ENV
from tests.test_images_api import METADATA

database_url = sqlite_database_url  # the CLI is the same on both backends; the API tests cover those

FLAVOR = "SCS-1L-1"
TERMINAL: dict[str, str | None] = {**TERMINAL_ENV}


def _image_version(server: LiveServer, project_id: str, disk: Path) -> dict[str, Any]:
    """Image 'Tiny' with an active version 1 holding ``disk`` (no boot test: the fake never boots)."""
    with server.client() as http:
        image = http.post(f"/v1/projects/{project_id}/images", json={"name": "Tiny"}).json()
        body = {"version": "1", "metadata": METADATA, "boot_test": {"enabled": False}}
        response = http.post(f"/v1/images/{image['id']}/versions", json=body)
        assert response.status_code == 201, response.text
        version: dict[str, Any] = response.json()
        upload(http, version, disk)
    return version


def _set_up(server: LiveServer, disk: Path, *, host: bool = True) -> dict[str, Any]:
    """Project 'web' with the image 'Tiny' (version 1), and a fake host with room for servers."""
    with server.client() as http:
        if host:
            register_host(http, "f1", "fake://f1?cpus=8&memory_mib=16384")
        project_id = project(http, "web")
    return _image_version(server, project_id, disk)


@pytest.fixture
def raw_disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(1024 * 1024) + b"\0" * (3 * 1024 * 1024))
    return path


@pytest.fixture
def cloud(api: LiveServer, raw_disk: Path) -> dict[str, Any]:
    return _set_up(api, raw_disk)


def create(server: LiveServer, name: str, *options: str) -> dict[str, Any]:
    created: dict[str, Any] = sovra_json(
        server, "server", "create", name, "-p", "web", "--image", "Tiny", "--flavor", FLAVOR, *options
    )
    return created


def api_server(server: LiveServer, server_id: str) -> dict[str, Any]:
    with server.client() as http:
        response = http.get(f"/v1/servers/{server_id}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found


def test_create_wait_ends_active_then_list_and_show(
    api: LiveServer, cloud: dict[str, Any], tmp_path: Path
) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\nhostname: web\n")
    result = sovra(
        api,
        "server",
        "create",
        "web-1",
        "--project",
        "web",
        "--image",
        "Tiny:1",
        "--flavor",
        FLAVOR,
        "--label",
        "tier=web",
        "--user-data",
        str(user_data),
        "--hostname",
        "www",
        "--wait",
    )
    assert result.exit_code == 0, result.output
    assert "Server web-1" in result.stdout and "ACTIVE" in result.stdout and "SCS-1L-1" in result.stdout
    assert "Tiny:1" in result.stdout and "waiting for operation" in result.stderr

    [listed] = sovra_json(api, "server", "list")
    assert listed["name"] == "web-1" and listed["state"] == "ACTIVE" and listed["power_state"] == "running"
    assert listed["image"]["version_id"] == cloud["id"] and listed["flavor"]["name"] == FLAVOR
    assert listed["labels"] == {"tier": "web"} and listed["hostname"] == "www"
    assert listed["user_data_bytes"] == len(user_data.read_bytes()) and listed["operation_id"] is None
    assert sovra_json(api, "server", "list", "--project", "web") == [listed]
    assert sovra_json(api, "server", "list", "--selector", "tier=db") == []

    table = sovra(api, "server", "list")
    assert table.exit_code == 0, table.output
    header = table.stdout.splitlines()[1]
    for column in ("NAME", "ID", "STATE", "POWER", "FLAVOR", "IMAGE", "AGE"):
        assert column in header
    assert listed["id"] in table.stdout and "running" in table.stdout and "Tiny:1" in table.stdout

    assert sovra_json(api, "server", "show", "web-1") == listed
    assert sovra_json(api, "server", "show", listed["id"]) == listed
    panel = sovra(api, "server", "show", "web-1", "--project", "web")
    assert panel.exit_code == 0, panel.output
    assert listed["id"] in panel.stdout and "f1" in panel.stdout  # admins see the host
    assert "SCS-1L-1: 1 vCPU, 1.0 GiB RAM" in panel.stdout and "tier=web" in panel.stdout

    missing = sovra(api, "server", "show", "web-2")
    assert missing.exit_code == 1 and "no server is named 'web-2'" in missing.stderr
    assert "`sovra server list`" in missing.stderr


def test_create_wait_json_and_the_progress_display(api: LiveServer, cloud: dict[str, Any]) -> None:
    created = create(api, "web-1", "--wait")
    assert created["state"] == "ACTIVE" and created["power_state"] == "running"
    assert created["image"]["version_id"] == cloud["id"]  # 'Tiny' alone boots its newest active version

    by_version_id = ("--image", cloud["id"], "--flavor", FLAVOR, "--wait")
    shown = sovra(api, "server", "create", "web-2", "-p", "web", *by_version_id, env=TERMINAL)
    assert shown.exit_code == 0, shown.output  # the display read the server's state as it went
    assert "Server web-2" in shown.stdout and "ACTIVE" in shown.stdout


def test_the_progress_display_names_the_step_and_the_server_state() -> None:
    screen = io.StringIO()
    display = Console(file=screen, force_terminal=True, force_interactive=True, width=120)
    steps = [{"name": "schedule", "state": "SUCCEEDED"}, {"name": "image", "state": "RUNNING"}]
    operation = {"verb": "server.create", "state": "RUNNING", "steps": steps}
    with servers.progress_display({"name": "web-1"}, lambda: "BUILDING", display) as updated:
        updated(operation)
    assert "web-1 BUILDING · server.create step image" in screen.getvalue()
    waiting = {"verb": "server.stop", "state": "PENDING", "steps": []}
    assert servers.current_step(waiting) == "waiting for a worker"


def test_create_without_wait_returns_with_the_operation(
    database_url: str, tmp_path: Path, raw_disk: Path
) -> None:
    with live_server(database_url, tmp_path / "data", workers=0) as idle:
        with worker_for(idle):
            _set_up(idle, raw_disk, host=False)
        # no worker runs now: the command can only return because it does not wait
        created = create(idle, "web-1", "--stopped")
        assert created["state"] == "BUILDING" and created["desired_power_state"] == "stopped"
        with idle.client() as http:
            operation = http.get(f"/v1/operations/{created['operation_id']}").json()
        assert operation["state"] == "PENDING" and operation["verb"] == "server.create"

        table = sovra(idle, "server", "create", "web-2", "-p", "web", "--image", "Tiny", "--flavor", FLAVOR)
        assert table.exit_code == 0, table.output
        [second] = [s for s in sovra_json(idle, "server", "list") if s["name"] == "web-2"]
        assert "BUILDING" in table.stdout and second["operation_id"] in table.stdout
        assert f"sovra op wait {second['operation_id']}" in table.stderr


def test_stop_start_and_hard_reboot(api: LiveServer, cloud: dict[str, Any]) -> None:
    server = create(api, "web-1", "--wait")

    stopped = sovra_json(api, "server", "stop", "web-1", "--grace", "5", "--wait")
    assert stopped["id"] == server["id"] and stopped["state"] == "SHUTOFF"
    assert stopped["power_state"] == "shutoff" and stopped["desired_power_state"] == "stopped"

    again = sovra(api, "server", "stop", "web-1")
    assert again.exit_code == 1 and "stop needs one of" in again.stderr

    started = sovra(api, "server", "start", server["id"], "--wait")
    assert started.exit_code == 0, started.output
    assert "ACTIVE" in started.stdout and "running" in started.stdout
    assert api_server(api, server["id"])["state"] == "ACTIVE"

    queued = sovra_json(api, "server", "reboot", "web-1", "--hard")
    assert queued["verb"] == "server.reboot" and queued["params"] == {"hard": True}
    waited = sovra_json(api, "op", "wait", queued["id"])
    assert waited["state"] == "SUCCEEDED"

    rebooted = sovra_json(api, "server", "reboot", "web-1", "--hard", "--wait")
    assert rebooted["state"] == "ACTIVE" and rebooted["power_state"] == "running"


def test_console_prints_and_follows_the_output(
    api: LiveServer, cloud: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = create(api, "web-1", "--wait")
    with api.client() as http:
        log = http.get(f"/v1/servers/{server['id']}/console").json()
    assert log["output"]

    printed = sovra(api, "server", "console", "web-1")
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == log["output"]
    assert sovra_json(api, "server", "console", "web-1") == log

    tail = sovra(api, "server", "console", "web-1", "--tail", "8")
    assert tail.exit_code == 0 and tail.stdout == log["output"][-8:]
    assert "--tail 16 shows more" in tail.stderr

    polls: list[float] = []

    def sleep(seconds: float) -> None:
        """Between the first read and the first poll the guest reboots (and prints its boot again);
        the second wait is where the user presses Ctrl-C."""
        polls.append(seconds)
        if len(polls) > 1:
            raise KeyboardInterrupt
        with api.client() as http:
            response = http.post(f"/v1/servers/{server['id']}:reboot", json={"hard": True})
            succeeded(http, response.json()["id"], timeout=60)

    monkeypatch.setattr(servers, "sleep", sleep)  # this module's only
    followed = sovra(api, "server", "console", "web-1", "--follow")
    assert followed.exit_code == 0, followed.output
    with api.client() as http:
        after = http.get(f"/v1/servers/{server['id']}/console").json()["output"]
    assert len(polls) == 2 and after.count("login:") == 2 * log["output"].count("login:")
    assert followed.stdout == after  # the first boot once, then the second one


def test_delete_asks_then_deletes(api: LiveServer, cloud: dict[str, Any]) -> None:
    server = create(api, "web-1", "--wait")

    unasked = sovra(api, "server", "delete", "web-1", "--wait")  # no one answers the question
    assert unasked.exit_code == 1 and "Delete server web-1" in unasked.stderr
    assert api_server(api, server["id"])["state"] == "ACTIVE"

    deleted = sovra(api, "server", "delete", "web-1", "--yes", "--wait")
    assert deleted.exit_code == 0, deleted.output
    assert f"Deleted server web-1 ({server['id']})" in deleted.stdout
    with api.client() as http:
        assert http.get(f"/v1/servers/{server['id']}").status_code == 404
    assert sovra_json(api, "server", "list") == []

    second = create(api, "web-2", "--wait")
    operation = sovra_json(api, "server", "delete", second["id"], "-y", "--wait")
    assert operation["state"] == "SUCCEEDED" and operation["target_id"] == second["id"]


def test_unknown_flavor_image_or_version_is_a_clear_error(api: LiveServer, cloud: dict[str, Any]) -> None:
    def attempt(image: str, flavor: str) -> Any:
        return sovra(api, "server", "create", "web-1", "-p", "web", "--image", image, "--flavor", flavor)

    flavor = attempt("Tiny", "SCS-99V-1")
    assert flavor.exit_code == 1 and "flavor 'SCS-99V-1' not found" in flavor.stderr
    image = attempt("Ubuntu", FLAVOR)
    assert image.exit_code == 1 and "no image is named 'Ubuntu'" in image.stderr
    assert "`sovra image list`" in image.stderr
    version = attempt("Tiny:7", FLAVOR)
    assert version.exit_code == 1 and "image Tiny has no version '7'" in version.stderr
    project_missing = sovra(api, "server", "create", "x", "-p", "nope", "--image", "Tiny", "--flavor", FLAVOR)
    assert project_missing.exit_code == 1 and "no project is named 'nope'" in project_missing.stderr
    assert sovra_json(api, "server", "list") == []


def test_a_failed_create_prints_the_fault(api: LiveServer, raw_disk: Path) -> None:
    _set_up(api, raw_disk, host=False)  # no host: nothing can be scheduled
    failed = sovra(
        api, "server", "create", "web-1", "-p", "web", "--image", "Tiny", "--flavor", FLAVOR, "--wait"
    )
    assert failed.exit_code == 1
    assert "ERROR" in failed.stdout  # the server as it ended, with its fault
    assert "server web-1 is ERROR: NO_VALID_HOST" in failed.stderr
    assert "sovra op show" in failed.stderr and "sovra server delete web-1" in failed.stderr
    [server] = sovra_json(api, "server", "list")
    assert server["state"] == "ERROR" and server["fault"]["code"] == "NO_VALID_HOST"


def test_new_output_is_what_a_newer_tail_adds() -> None:
    assert new_output("", "boot\n") == "boot\n"
    assert new_output("boot\n", "boot\nlogin: ") == "login: "
    assert new_output("abcdef", "defgh") == "gh"  # a tail window that moved on
    assert new_output("abcdef", "abcdef") == ""
    assert new_output("old log", "fresh") == "fresh"  # the log started over
    assert new_output("boot\n", "") == ""
    assert new_output("a\na\n", "a\na\na\n") == "a\n"  # repeated lines are counted, not merged


def test_age_uses_the_largest_unit() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    for delta, expected in [
        (timedelta(seconds=42), "42s"),
        (timedelta(minutes=5, seconds=59), "5m"),
        (timedelta(hours=3), "3h"),
        (timedelta(days=12, hours=23), "12d"),
    ]:
        assert age((now - delta).isoformat(), now) == expected


def test_resize_rebuild_and_snapshot(api: LiveServer, cloud: dict[str, Any]) -> None:
    server = create(api, "web-1", "--wait")

    resized = sovra_json(api, "server", "resize", "web-1", "--flavor", "SCS-1V-2", "--wait")
    assert resized["state"] == "ACTIVE" and resized["flavor"]["name"] == "SCS-1V-2"
    same = sovra(api, "server", "resize", "web-1", "--flavor", "SCS-1V-2")
    assert same.exit_code == 1 and "already has flavor SCS-1V-2" in same.stderr

    rebuilt = sovra(api, "server", "rebuild", "web-1", "--image", "Tiny:1", "--wait")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "ACTIVE" in rebuilt.stdout and api_server(api, server["id"])["image"]["version_id"] == cloud["id"]

    snap = sovra(api, "server", "snapshot", "web-1", "--image", "Tiny", "--version", "2", "--wait")
    assert snap.exit_code == 0, snap.output
    assert "version 2 of image Tiny" in snap.stderr
    with api.client() as http:
        versions = http.get(f"/v1/images/{cloud['image_id']}/versions").json()["items"]
    assert sorted(v["spec"]["version"] for v in versions) == ["1", "2"]
