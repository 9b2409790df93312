"""``sovra project`` and ``sovra op`` against a real API over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from sovra.cli import config as cli_config
from sovra.cli.client import CliError, SovraClient
from sovra.cli.main import app
from sovra.cli.operations import wait_and_report
from sovra.cli.output import OutputFormat
from sovra.operations.engine import run_workers
from sovra.operations.registry import default_registry
from tests.support.live_server import LiveServer, free_port, live_server

runner = CliRunner()


def sovra(server: LiveServer | None, *args: str, env: dict[str, str | None] | None = None) -> Result:
    """Run the CLI in-process with the connection in the environment, as a user would set it."""
    base: dict[str, str | None] = {
        "COLUMNS": None,
        "SOVRA_URL": None,
        "SOVRA_TOKEN": None,
        "SOVRA_CONFIG": "/nonexistent/sovra-test/config.json",  # never the user's own login
    }
    if server is not None:
        base |= {"SOVRA_URL": server.url, "SOVRA_TOKEN": server.token}
    return runner.invoke(app, list(args), env=base | (env or {}))


def sovra_json(server: LiveServer, *args: str) -> Any:
    result = sovra(server, *args, "--output", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def create_project(server: LiveServer, name: str, *options: str) -> dict[str, Any]:
    project: dict[str, Any] = sovra_json(server, "project", "create", name, *options)
    return project


@pytest.fixture
def idle_api(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """A real API with no worker: its operations stay PENDING until a test starts one."""
    with live_server(database_url, tmp_path / "data", workers=0) as server:
        yield server


@contextmanager
def worker_for(server: LiveServer) -> Iterator[None]:
    stop = threading.Event()
    threads = run_workers(server.db, default_registry(), server.settings, 1, stop)
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def test_project_lifecycle(api: LiveServer) -> None:
    created = create_project(api, "demo", "--description", "first project", "--label", "env=dev")
    assert created["name"] == "demo" and created["labels"] == {"env": "dev"}
    assert created["spec"] == {"description": "first project", "require_image_signature": False}
    assert created["status"]["state"] == "ACTIVE" and created["version"] == 1

    listed = sovra(api, "project", "list")
    assert listed.exit_code == 0, listed.output
    assert "demo" in listed.stdout and created["id"] in listed.stdout and "env=dev" in listed.stdout

    shown = sovra(api, "project", "show", "demo")
    assert shown.exit_code == 0, shown.output
    assert created["id"] in shown.stdout and "first project" in shown.stdout
    assert sovra_json(api, "project", "show", created["id"]) == created

    updated = sovra_json(
        api,
        "project",
        "update",
        "demo",
        "--description",
        "changed",
        "--label",
        "tier=web",
        "--remove-label",
        "env",
    )
    assert updated["spec"]["description"] == "changed" and updated["labels"] == {"tier": "web"}
    assert updated["version"] == 2
    with api.client() as http:
        assert http.get(f"/v1/projects/{created['id']}").json()["labels"] == {"tier": "web"}

    deleted = sovra(api, "project", "delete", "demo", "--wait", "--output", "json")
    assert deleted.exit_code == 0, deleted.output
    operation = json.loads(deleted.stdout)
    assert operation["state"] == "SUCCEEDED" and operation["target_id"] == created["id"]
    with api.client() as http:
        assert http.get(f"/v1/projects/{created['id']}").status_code == 404
    assert sovra_json(api, "project", "list") == []


def test_delete_retry_with_request_id_after_the_project_is_gone(api: LiveServer) -> None:
    project = create_project(api, "demo")
    first = sovra(api, "project", "delete", project["id"], "--request-id", "r-1", "--wait", "-o", "json")
    assert first.exit_code == 0, first.output
    operation = json.loads(first.stdout)
    assert operation["state"] == "SUCCEEDED"
    again = sovra_json(api, "project", "delete", project["id"], "--request-id", "r-1")
    assert again["id"] == operation["id"]
    gone = sovra(api, "project", "delete", project["id"])
    assert gone.exit_code == 1 and f"project '{project['id']}' not found" in gone.stderr


def test_rename_and_nothing_to_update(api: LiveServer) -> None:
    project = create_project(api, "old-name")
    renamed = sovra_json(api, "project", "update", project["id"], "--name", "new-name")
    assert renamed["name"] == "new-name" and renamed["id"] == project["id"]
    nothing = sovra(api, "project", "update", "new-name")
    assert nothing.exit_code == 2 and "nothing to update" in nothing.stderr


def test_list_selector_limit_and_pagination(api: LiveServer) -> None:
    for name, label in [
        ("a", "env=prod"),
        ("b", "env=dev"),
        ("c", "env=prod"),
        ("d", "env=dev"),
        ("e", "x=y"),
    ]:
        create_project(api, name, "--label", label)
    # Small server pages, so that the CLI has to follow next_page_token to list everything.
    api.settings.max_page_size = 2
    assert [p["name"] for p in sovra_json(api, "project", "list")] == ["a", "b", "c", "d", "e"]
    assert [p["name"] for p in sovra_json(api, "project", "list", "--limit", "3")] == ["a", "b", "c"]
    prod = sovra_json(api, "project", "list", "--selector", "env=prod")
    assert [p["name"] for p in prod] == ["a", "c"]
    assert {"id", "name", "labels", "spec", "status", "version"} <= set(prod[0])
    assert [p["name"] for p in sovra_json(api, "project", "list", "-s", "env in (dev),!x")] == ["b", "d"]
    table = sovra(api, "project", "list", "--selector", "env=dev")
    assert table.exit_code == 0 and "b" in table.stdout and "env=prod" not in table.stdout

    bad = sovra(api, "project", "list", "--selector", "env in (")
    assert bad.exit_code == 1
    assert "label_selector" in bad.stderr and "unbalanced" in bad.stderr


def test_malformed_label_is_a_usage_error(api: LiveServer) -> None:
    result = sovra(api, "project", "create", "demo", "--label", "env=dev", "--label", "novalue")
    assert result.exit_code == 2
    assert "novalue" in result.stderr and "KEY=VALUE" in result.stderr
    assert sovra_json(api, "project", "list") == []  # nothing was sent

    invalid = sovra(api, "project", "create", "demo", "--label", "bad key=v")
    assert invalid.exit_code == 1 and "labels.bad key" in invalid.stderr  # the API's field error


def test_unknown_project_is_not_found(api: LiveServer) -> None:
    missing = str(uuid.uuid4())
    result = sovra(api, "project", "show", missing)
    assert result.exit_code == 1
    assert "Not found" in result.stderr and f"project '{missing}' not found" in result.stderr

    by_name = sovra(api, "project", "delete", "nosuchproject")
    assert by_name.exit_code == 1 and "no project is named 'nosuchproject'" in by_name.stderr


def test_stale_version_gives_precondition_failed(api: LiveServer) -> None:
    create_project(api, "demo")
    assert sovra_json(api, "project", "update", "demo", "--description", "first")["version"] == 2
    stale = sovra(api, "project", "update", "demo", "--description", "second", "--expect-version", "1")
    assert stale.exit_code == 1
    assert "Precondition failed" in stale.stderr and "is at version 2, not 1" in stale.stderr
    assert sovra_json(api, "project", "show", "demo")["spec"]["description"] == "first"


def test_op_show_steps_and_cancel_of_finished_op(api: LiveServer) -> None:
    project = create_project(api, "demo")
    assert sovra(api, "project", "delete", "demo", "--wait").exit_code == 0
    [listed] = sovra_json(api, "op", "list", "--target", project["id"], "--state", "succeeded")
    assert listed["verb"] == "project.delete"
    assert [o["id"] for o in sovra_json(api, "op", "list", "--project", project["id"])] == [listed["id"]]
    assert sovra_json(api, "op", "list", "--verb", "noop") == []

    operation = sovra_json(api, "op", "show", listed["id"])
    assert [s["name"] for s in operation["steps"]] == ["check-unused", "teardown"]
    shown = sovra(api, "op", "show", listed["id"])
    assert shown.exit_code == 0, shown.output
    for text in ("check-unused", "teardown", "SUCCEEDED", operation["steps"][0]["worker"]):
        assert text in shown.stdout

    cancelled = sovra(api, "op", "cancel", listed["id"])
    assert cancelled.exit_code == 1
    assert (
        "Conflict" in cancelled.stderr and "already ended (SUCCEEDED); nothing to cancel" in cancelled.stderr
    )
    assert sovra(api, "op", "wait", listed["id"]).exit_code == 0  # already done: returns at once


def test_delete_refused_while_used_shows_dependents(api: LiveServer) -> None:
    used = create_project(api, "used")
    user = create_project(api, "user")
    with api.client() as http:
        edge = {"source_id": user["id"], "target_id": used["id"], "type": "uses"}
        assert http.post("/v1/edges", json=edge).status_code == 201

    refused = sovra(api, "project", "delete", "used")
    assert refused.exit_code == 1
    assert (
        "cannot be deleted" in refused.stderr and f"dependents: Project user ({user['id']})" in refused.stderr
    )

    [dependent] = sovra_json(api, "project", "dependents", "used")
    assert (dependent["id"], dependent["via"], dependent["depth"]) == (user["id"], "uses", 1)
    assert [d["id"] for d in sovra_json(api, "project", "dependencies", user["id"], "--depth", "1")] == [
        used["id"]
    ]
    assert [t["id"] for t in sovra_json(api, "project", "teardown-order", "used")] == [used["id"]]
    table = sovra(api, "project", "dependents", used["id"])
    assert table.exit_code == 0 and user["id"] in table.stdout


def test_wrong_token_is_unauthenticated(api: LiveServer) -> None:
    result = sovra(api, "project", "list", env={"SOVRA_TOKEN": "not-the-token"})
    assert result.exit_code == 1
    assert "Unauthenticated" in result.stderr and "the bearer token is not valid" in result.stderr
    assert "SOVRA_TOKEN" in result.stderr


def test_token_and_url_from_the_login_config(
    api: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "sovra" / "config.json"
    env: dict[str, str | None] = {"SOVRA_TOKEN": None, "SOVRA_URL": None, "SOVRA_CONFIG": str(config)}
    missing = sovra(None, "project", "list", env=env)
    assert missing.exit_code == 2 and "sovra login" in missing.stderr and "SOVRA_TOKEN" in missing.stderr
    monkeypatch.setenv("SOVRA_CONFIG", str(config))
    cli_config.save(api.url, api.token)
    assert config.stat().st_mode & 0o777 == 0o600
    assert sovra(None, "project", "list", env=env).exit_code == 0


def test_unreachable_api_gives_a_hint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = sovra(None, "project", "list", "--url", url, env={"SOVRA_TOKEN": "x"})
    assert result.exit_code == 2
    assert url in result.stderr and "is `sovra up` running?" in result.stderr and "SOVRA_URL" in result.stderr

    bad = sovra(None, "op", "list", env={"SOVRA_TOKEN": "x", "SOVRA_URL": "localhost:8790"})
    assert bad.exit_code == 2 and "invalid API URL" in bad.stderr


def test_wait_times_out_then_cancel_ends_it(idle_api: LiveServer) -> None:
    create_project(idle_api, "demo")
    first = sovra_json(idle_api, "project", "delete", "demo", "--request-id", "r-1")
    again = sovra_json(idle_api, "project", "delete", "demo", "--request-id", "r-1")
    assert first["state"] == "PENDING" and again["id"] == first["id"]  # idempotent retry

    timed_out = sovra(idle_api, "op", "wait", first["id"], "--timeout", "0.5")
    assert timed_out.exit_code == 3
    assert "still PENDING" in timed_out.stderr and f"sovra op wait {first['id']}" in timed_out.stderr
    assert [o["id"] for o in sovra_json(idle_api, "op", "list", "--state", "PENDING")] == [first["id"]]

    cancelled = sovra_json(idle_api, "op", "cancel", first["id"])
    assert cancelled["state"] == "CANCELLED"
    waited = sovra(idle_api, "op", "wait", first["id"])
    assert waited.exit_code == 1
    assert f"operation {first['id']} was cancelled: cancelled before it started" in waited.stderr


def test_wait_reports_a_failed_operation(idle_api: LiveServer) -> None:
    used = create_project(idle_api, "used")
    user = create_project(idle_api, "user")
    operation = sovra_json(idle_api, "project", "delete", "used")
    with idle_api.client() as http:  # a user appears after the delete was accepted
        edge = {"source_id": user["id"], "target_id": used["id"], "type": "uses"}
        assert http.post("/v1/edges", json=edge).status_code == 201
    with worker_for(idle_api):
        result = sovra(idle_api, "op", "wait", operation["id"], "--output", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "FAILED"
    assert f"operation {operation['id']} failed: IN_USE: still used by Project user" in result.stderr
    assert "(step check-unused)" in result.stderr


def test_wait_shows_progress_on_a_terminal(idle_api: LiveServer) -> None:
    create_project(idle_api, "demo")
    operation = sovra_json(idle_api, "project", "delete", "demo")
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    with SovraClient(idle_api.url, idle_api.token) as client, pytest.raises(CliError) as raised:
        wait_and_report(client, operation, 0.6, OutputFormat.TABLE, display=terminal)
    assert raised.value.exit_code == 3
    assert "project.delete PENDING" in screen.getvalue() and "0%" in screen.getvalue()


def test_installed_command_in_a_subprocess(api: LiveServer) -> None:
    env = {**os.environ, "SOVRA_URL": api.url, "SOVRA_TOKEN": api.token}
    command = Path(sys.executable).parent / "sovra"
    created = subprocess.run(
        [command, "project", "create", "sub", "-l", "a=b", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["labels"] == {"a": "b"}
    missing = subprocess.run(
        [command, "project", "show", "nope"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 1 and "no project is named 'nope'" in missing.stderr and missing.stdout == ""
