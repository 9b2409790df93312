"""``sovra login``, ``whoami``, ``token``, ``project member`` and ``audit`` against a real API,
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from sovra.cli.audit import parse_time
from sovra.cli.main import app
from tests.support.live_server import LiveServer
from tests.test_cli import create_project, runner, sovra, sovra_json

SECRET = re.compile(r"sovra_[A-Za-z0-9_-]{43}")


def as_token(secret: str) -> dict[str, str | None]:
    """The environment of a CLI acting as the API token ``secret``."""
    return {"SOVRA_TOKEN": secret}


def ok_json(server: LiveServer, *args: str, env: dict[str, str | None] | None = None) -> Any:
    result = sovra(server, *args, "--output", "json", env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def create_token(server: LiveServer, name: str, role: str, *options: str) -> dict[str, Any]:
    token: dict[str, Any] = sovra_json(server, "token", "create", name, "--role", role, *options)
    return token


def logged_out(config: Path) -> dict[str, str | None]:
    """No token or URL in the environment: only what `sovra login` stored in ``config`` counts."""
    return {"SOVRA_CONFIG": str(config), "SOVRA_TOKEN": None, "SOVRA_URL": None}


def login_with_stdin(config: Path, url: str, secret: str) -> Result:
    return runner.invoke(
        app, ["login", "--url", url], input=secret + "\n", env=logged_out(config) | {"COLUMNS": None}
    )


def test_login_verifies_and_stores_the_token(api: LiveServer, tmp_path: Path) -> None:
    config = tmp_path / "home" / "sovra" / "config.json"
    env = logged_out(config)
    result = sovra(None, "login", "--url", api.url, "--token", api.token, env=env)
    assert result.exit_code == 0, result.output
    assert api.token not in result.output  # never echoed
    assert "bootstrap" in result.stdout and "every role in every project" in result.stdout
    assert str(config) in result.stderr
    assert config.stat().st_mode & 0o777 == 0o600
    assert json.loads(config.read_text()) == {"url": api.url, "token": api.token}

    me = sovra(None, "whoami", "--output", "json", env=env)  # no SOVRA_TOKEN, no SOVRA_URL
    assert me.exit_code == 0, me.output
    assert json.loads(me.stdout)["principal"] == "bootstrap" and json.loads(me.stdout)["is_admin"] is True
    shown = sovra(None, "whoami", env=env)
    assert shown.exit_code == 0 and "bootstrap admin" in shown.stdout


def test_login_with_a_wrong_token_stores_nothing(api: LiveServer, tmp_path: Path) -> None:
    config = tmp_path / "sovra" / "config.json"
    env = logged_out(config)
    wrong = sovra(None, "login", "--url", api.url, "--token", "sovra_wrong", env=env)
    assert wrong.exit_code == 1
    assert "Unauthenticated" in wrong.stderr and "the bearer token is not valid" in wrong.stderr
    assert "nothing was stored" in wrong.stderr
    assert not config.exists()

    assert sovra(None, "login", "--url", api.url, "--token", api.token, env=env).exit_code == 0
    again = login_with_stdin(config, api.url, "not-a-token")
    assert again.exit_code == 1 and "the bearer token is not valid" in again.stderr
    assert json.loads(config.read_text())["token"] == api.token  # the good login is kept

    empty = login_with_stdin(config, api.url, "")
    assert empty.exit_code == 2 and "no token given" in empty.stderr


def test_project_token_acts_with_its_role_until_revoked(api: LiveServer, tmp_path: Path) -> None:
    demo = create_project(api, "demo")
    create_project(api, "other")

    created = sovra(api, "token", "create", "ci", "--role", "member", "--project", "demo")
    assert created.exit_code == 0, created.output
    assert "shown only now" in created.stderr
    [secret] = SECRET.findall(created.stdout)
    member = as_token(secret)

    me = ok_json(api, "whoami", env=member)
    token_id = me["token_id"]
    assert me["principal"] == f"token:{token_id}" and me["is_admin"] is False
    assert me["roles"] == {demo["id"]: "member"}
    assert [p["name"] for p in ok_json(api, "project", "list", env=member)] == ["demo"]
    assert ok_json(api, "project", "show", "demo", env=member)["id"] == demo["id"]
    refused = sovra(api, "project", "create", "mine", env=member)
    assert refused.exit_code == 1
    assert "Forbidden (403)" in refused.stderr and "needs the admin role" in refused.stderr
    assert "token ci does not hold" in refused.stderr

    # The secret works for `sovra login` from stdin too; whoami then names the project.
    config = tmp_path / "member" / "config.json"
    logged_in = login_with_stdin(config, api.url, secret)
    assert logged_in.exit_code == 0, logged_in.output
    assert secret not in logged_in.output
    assert "demo" in logged_in.stdout and demo["id"] in logged_in.stdout and "member" in logged_in.stdout

    [listed] = ok_json(api, "token", "list", "--project", "demo")
    assert listed["id"] == token_id and listed["role"] == "member" and listed["project_id"] == demo["id"]
    assert "secret" not in listed and listed["hint"] == secret[len("sovra_") :][:6]
    assert token_id in [t["id"] for t in ok_json(api, "token", "list")]
    table = sovra(api, "token", "list", "--project", demo["id"])
    assert table.exit_code == 0 and token_id in table.stdout and "ACTIVE" in table.stdout
    assert secret not in table.stdout

    revoked = sovra(api, "token", "revoke", token_id)
    assert revoked.exit_code == 0 and f"Token ci ({token_id}) is revoked" in revoked.stdout
    after = sovra(api, "project", "list", env=member)
    assert after.exit_code == 1
    assert (
        "Unauthenticated (401)" in after.stderr and f"API token ci ({token_id}) was revoked" in after.stderr
    )
    [shown] = ok_json(api, "token", "list", "--project", "demo")
    assert shown["revoked_at"] is not None
    assert "REVOKED" in sovra(api, "token", "list", "--project", "demo").stdout


def test_global_tokens_are_for_admins(api: LiveServer) -> None:
    created = create_token(api, "automation", "admin", "--expires-in-days", "7")
    assert created["project_id"] is None and created["secret"].startswith("sovra_")
    expires = datetime.fromisoformat(created["expires_at"]) - datetime.fromisoformat(created["created_at"])
    assert timedelta(days=7) - timedelta(seconds=5) < expires <= timedelta(days=7)
    assert ok_json(api, "whoami", env=as_token(created["secret"]))["is_admin"] is True

    create_project(api, "demo")
    reader = create_token(api, "ro", "reader", "--project", "demo")
    refused = sovra(api, "token", "create", "mine", "--role", "reader", env=as_token(reader["secret"]))
    assert refused.exit_code == 1 and "Forbidden (403)" in refused.stderr and "admin role" in refused.stderr

    bad_role = sovra(api, "token", "create", "x", "--role", "owner", "--project", "demo")
    assert bad_role.exit_code == 2 and "unknown role 'owner'" in bad_role.stderr
    [listed] = ok_json(api, "token", "list", "--project", "demo")
    assert listed["last_used_at"] is not None  # the refused call used it
    assert {k: v for k, v in listed.items() if k != "last_used_at"} == {
        k: v for k, v in reader.items() if k not in ("secret", "last_used_at")
    }


def test_member_add_list_remove(api: LiveServer) -> None:
    demo = create_project(api, "demo")
    subject = "oidc:https://idp.example/realms/x#alice"  # slashes too
    added = ok_json(api, "project", "member", "add", "demo", subject, "--role", "member")
    assert (added["subject"], added["role"], added["created_by"]) == (subject, "member", "bootstrap")
    group = sovra(api, "project", "member", "add", demo["id"], "--group", "ops", "--role", "manager")
    assert group.exit_code == 0 and "group:ops is now manager in project demo" in group.stdout

    members = ok_json(api, "project", "member", "list", "demo")
    assert [(m["subject"], m["role"]) for m in members] == [("group:ops", "manager"), (subject, "member")]
    table = sovra(api, "project", "member", "list", "demo")
    assert table.exit_code == 0 and "group:ops" in table.stdout and subject in table.stdout

    replaced = ok_json(api, "project", "member", "add", "demo", "group:ops", "--role", "reader")
    assert replaced["role"] == "reader"
    removed = sovra(api, "project", "member", "remove", "demo", subject)
    assert removed.exit_code == 0 and f"Removed {subject} (member) from project demo" in removed.stdout
    assert [m["subject"] for m in ok_json(api, "project", "member", "list", "demo")] == ["group:ops"]
    assert ok_json(api, "project", "member", "remove", "demo", "--group", "ops")["role"] == "reader"
    assert ok_json(api, "project", "member", "list", "demo") == []

    gone = sovra(api, "project", "member", "remove", "demo", "--group", "ops")
    assert gone.exit_code == 1 and "'group:ops' has no role in project" in gone.stderr
    both = sovra(api, "project", "member", "add", "demo", "group:x", "--group", "y", "--role", "reader")
    assert both.exit_code == 2 and "either SUBJECT or --group" in both.stderr
    no_such = sovra(api, "project", "member", "list", "nope")
    assert no_such.exit_code == 1 and "no project is named 'nope'" in no_such.stderr


def test_nobody_grants_more_than_they_hold(api: LiveServer) -> None:
    create_project(api, "demo")
    member = as_token(create_token(api, "dev", "member", "--project", "demo")["secret"])
    manager = as_token(create_token(api, "lead", "manager", "--project", "demo")["secret"])

    add = sovra(api, "project", "member", "add", "demo", "--group", "ops", "--role", "manager", env=member)
    assert add.exit_code == 1 and "Forbidden (403)" in add.stderr
    assert "needs the manager role" in add.stderr and "token dev is member" in add.stderr
    higher = sovra(api, "token", "create", "up", "--role", "manager", "--project", "demo", env=member)
    assert higher.exit_code == 1 and "cannot grant manager: token dev holds member here" in higher.stderr
    same = ok_json(api, "token", "create", "peer", "--role", "member", "--project", "demo", env=member)
    assert same["role"] == "member" and same["created_by"] == ok_json(api, "whoami", env=member)["principal"]

    ok = sovra(api, "project", "member", "add", "demo", "--group", "ops", "--role", "manager", env=manager)
    assert ok.exit_code == 0, ok.output
    admin = sovra(api, "project", "member", "add", "demo", "--group", "root", "--role", "admin", env=manager)
    assert admin.exit_code == 1 and "cannot grant admin: token lead holds manager here" in admin.stderr
    assert [m["subject"] for m in ok_json(api, "project", "member", "list", "demo")] == ["group:ops"]


def test_audit_shows_the_mutations(api: LiveServer) -> None:
    demo = create_project(api, "demo")
    other = create_project(api, "other")
    token = create_token(api, "ci", "manager", "--project", "demo")
    ci = as_token(token["secret"])
    principal = f"token:{token['id']}"
    assert (
        sovra(api, "project", "member", "add", "demo", "--group", "ops", "--role", "member", env=ci).exit_code
        == 0
    )
    assert sovra(api, "project", "member", "remove", "demo", "--group", "ops", env=ci).exit_code == 0
    assert (
        sovra(api, "project", "member", "add", "other", "--group", "ops", "--role", "reader").exit_code == 0
    )
    assert sovra(api, "project", "create", "nope", env=ci).exit_code == 1  # denied, and recorded

    records = ok_json(api, "audit", "--project", "demo")
    assert [(r["action"], r["principal"], r["resource_kind"]) for r in records] == [
        ("delete_member", principal, "RoleBinding"),
        ("put_member", principal, "RoleBinding"),
        ("create_project_token", "bootstrap", "ApiToken"),
        ("create_project", "bootstrap", "Project"),  # the creation belongs to the project it made
    ]
    assert records[2]["resource_id"] == token["id"] and records[3]["resource_id"] == demo["id"]
    assert {r["project_id"] for r in records} == {demo["id"]}
    assert {(r["result"], r["status_code"]) for r in records} == {
        ("success", 200),
        ("success", 204),
        ("success", 201),
    }
    times = [r["time"] for r in records]
    assert times == sorted(times, reverse=True)
    on_other, other_created = ok_json(api, "audit", "--project", other["id"])
    assert other_created["action"] == "create_project"
    assert (on_other["action"], on_other["project_id"]) == ("put_member", other["id"])

    mine = ok_json(api, "audit", "--principal", principal)
    assert [(r["action"], r["result"], r["status_code"]) for r in mine] == [
        ("create_project", "denied", 403),
        ("delete_member", "success", 204),
        ("put_member", "success", 200),
    ]
    assert [r["action"] for r in ok_json(api, "audit", "--resource", token["id"])] == ["create_project_token"]
    assert ok_json(api, "audit", "--project", "demo", env=ci) == records  # a manager sees its project's
    assert len(ok_json(api, "audit", "--since", "1h")) == len(ok_json(api, "audit")) >= 6
    assert ok_json(api, "audit", "--until", "2000-01-01") == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert ok_json(api, "audit", "--since", future) == []

    limited = sovra(api, "audit", "--limit", "2", "--output", "json")
    assert limited.exit_code == 0 and len(json.loads(limited.stdout)) == 2
    assert "Showing the newest 2" in limited.stderr
    table = sovra(api, "audit", "--project", "demo")
    assert table.exit_code == 0, table.output
    for text in (principal, "bootstrap", "delete_member", f"ApiToken {token['id']}", "success", "204"):
        assert text in table.stdout


def test_audit_names_the_member_subject(api: LiveServer) -> None:
    create_project(api, "demo")
    assert sovra(api, "project", "member", "add", "demo", "--group", "ops", "--role", "reader").exit_code == 0
    assert [r["action"] for r in ok_json(api, "audit", "--resource", "group:ops")] == ["put_member"]


def test_audit_since_must_be_a_time_or_duration() -> None:
    result = sovra(None, "audit", "--since", "yesterday", env={"SOVRA_TOKEN": "x"})
    assert result.exit_code == 2
    assert "'yesterday' is neither an ISO 8601 time" in result.stderr and "--since" in result.stderr
    until = sovra(None, "audit", "--until", "2025-13-01", env={"SOVRA_TOKEN": "x"})
    assert until.exit_code == 2 and "'2025-13-01'" in until.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", datetime(2025, 5, 1, 11, 30, tzinfo=UTC)),
        ("1h", datetime(2025, 5, 1, 11, 0, tzinfo=UTC)),
        ("2d", datetime(2025, 4, 29, 12, 0, tzinfo=UTC)),
        ("2025-04-01T08:00:00Z", datetime(2025, 4, 1, 8, 0, tzinfo=UTC)),
        ("2025-04-01T08:00:00+02:00", datetime(2025, 4, 1, 6, 0, tzinfo=UTC)),
        ("2025-04-01", datetime(2025, 4, 1, tzinfo=UTC)),  # no offset: UTC
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    now = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time(text, now) == expected


@pytest.mark.parametrize("text", ["", "h", "1y", "-1h", "99999999999999d", "soon"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="neither an ISO 8601 time"):
        parse_time(text)
