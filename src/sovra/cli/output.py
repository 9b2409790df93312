"""Rendering shared by the resource commands: JSON or Rich tables and panels, and error reports.

Results go to stdout (so ``--output json`` pipes cleanly into ``jq``); errors, hints and progress
go to stderr.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from sovra.cli.client import ApiError, CliError, Record

err_console = Console(stderr=True, soft_wrap=True)
PIPE_WIDTH = 240


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


OutputOption = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", case_sensitive=False, help="table for people, json for programs."),
]

STATE_STYLES = {
    "ACTIVE": "green",
    "SUCCEEDED": "green",
    "PENDING": "yellow",
    "RUNNING": "cyan",
    "DELETING": "yellow",
    "FAILED": "red",
    "CANCELLED": "magenta",
}


class CommandGroup(TyperGroup):
    """A command group that prints ``CliError``s for people and exits with their code."""

    def invoke(self, ctx: Any) -> Any:  # a click Context; typer.Context would narrow the override
        try:
            return super().invoke(ctx)
        except CliError as exc:
            print_error(exc)
            raise typer.Exit(exc.exit_code) from exc


def stdout_console() -> Console:
    """The console for results.

    Rich lays out for 80 columns when stdout is not a terminal; output piped into ``grep`` or a
    file gets up to ``PIPE_WIDTH`` columns instead, so that ids in tables are never cut.
    """
    terminal = Console()
    if terminal.is_terminal or "COLUMNS" in os.environ:
        return terminal
    return Console(width=PIPE_WIDTH)


def print_result(renderable: RenderableType) -> None:
    console = stdout_console()
    _fit(renderable, console)
    console.print(renderable)


def print_json(data: Any) -> None:
    """Exactly what the API returned, indented; plain ``print`` so Rich never wraps or styles it."""
    print(json.dumps(data, indent=2, ensure_ascii=False))


def emit(output: OutputFormat, data: Any, render: Callable[[Any], RenderableType]) -> None:
    """Print ``data`` as JSON, or as what ``render`` makes of it."""
    if output is OutputFormat.JSON:
        print_json(data)
    else:
        print_result(render(data))


def note(message: str) -> None:
    """A human remark on stderr (never mixed into the result on stdout)."""
    err_console.print(message)


def print_error(error: CliError) -> None:
    """Title and detail, the field errors, problem extensions, and a hint of what to do."""
    if isinstance(error, ApiError):
        err_console.print(
            f"[bold red]Error:[/] [bold]{escape(error.title)}[/] ({error.status}): {escape(error.detail)}"
        )
        for field, message in error.field_errors:
            said = message == error.detail  # the API often repeats a lone field error as the detail
            err_console.print(
                f"  field [yellow]{escape(field)}[/]" + ("" if said else f": {escape(message)}")
            )
        for key, value in error.extensions.items():
            err_console.print(f"  {escape(key)}: {escape(_extension_text(value))}")
    else:
        err_console.print(f"[bold red]Error:[/] {escape(error.message)}")
    if error.hint:
        err_console.print(f"[dim]Hint:[/] {escape(error.hint)}")


def _extension_text(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, dict) and "kind" in v for v in value):
        return ", ".join(f"{v['kind']} {v.get('name', '')} ({v.get('id', '')})" for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def when(value: str | None) -> str:
    """An API timestamp as ``YYYY-MM-DD HH:MM:SS`` in UTC; empty when absent."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def state_text(state: str | None) -> Text:
    return Text(state or "", style=STATE_STYLES.get(state or "", ""))


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class ResourceTable(Table):
    """A table that knows which columns it can drop when the terminal is too narrow for all."""

    def __init__(self, *columns: str, title: str | None = None) -> None:
        super().__init__(title=title, header_style="bold", title_justify="left")
        self.optional: list[str] = []
        for spec in columns:
            header = spec.removesuffix("?")
            if spec.endswith("?"):
                self.optional.append(header)
            if header == "ID":  # ids are copied and pasted: never wrap or shrink them
                self.add_column(header, no_wrap=True, min_width=36)
            else:
                self.add_column(header, overflow="fold", min_width=min(len(header), 8))

    def fit(self, console: Console) -> None:
        """Drop optional columns, rightmost first, until the table fits ``console``."""
        unbounded = console.options.update(max_width=10 * console.width)
        for header in reversed(self.optional):
            if Measurement.get(console, unbounded, self).maximum <= console.width:
                return
            self.columns = [c for c in self.columns if c.header != header]


def table(*columns: str, title: str | None = None) -> ResourceTable:
    """A table; a column header ending in '?' marks a column to drop first when space is short."""
    return ResourceTable(*columns, title=title)


def _fit(renderable: RenderableType, console: Console) -> None:
    if isinstance(renderable, ResourceTable):
        renderable.fit(console)
    elif isinstance(renderable, Group):
        for part in renderable.renderables:
            _fit(part, console)


def fields_panel(
    title: str, rows: Iterable[tuple[str, RenderableType]], extra: list[RenderableType]
) -> Panel:
    """One resource as a panel: ``field  value`` lines, then any sub-tables."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        grid.add_row(name, value)
    return Panel(Group(grid, *extra), title=title, title_align="left", expand=False)


# Projects


def project_table(projects: list[Record]) -> RenderableType:
    if not projects:
        return Text("No projects.", style="dim")
    result = table("NAME", "ID", "STATE", "LABELS", "DESCRIPTION?", "CREATED?")
    for p in projects:
        result.add_row(
            escape(p["name"]),
            p["id"],
            state_text(p["status"]["state"]),
            escape(labels_text(p["labels"])),
            escape(p["spec"].get("description", "")),
            when(p["created_at"]),
        )
    return result


def project_panel(project: Record) -> RenderableType:
    status = project["status"]
    rows: list[tuple[str, RenderableType]] = [
        ("id", project["id"]),
        ("name", escape(project["name"])),
        ("description", escape(project["spec"].get("description", ""))),
        ("labels", escape(labels_text(project["labels"]))),
        ("state", state_text(status["state"])),
        ("operation", status.get("operation_id") or ""),
        ("version", str(project["version"])),
        ("generation", f"{project['generation']} (observed {status.get('observed_generation', 0)})"),
        ("created", when(project["created_at"])),
        ("updated", when(project["updated_at"])),
    ]
    extra: list[RenderableType] = []
    if status.get("conditions"):
        conditions = table("TYPE", "STATUS", "REASON", "MESSAGE", "SINCE?")
        for c in status["conditions"]:
            conditions.add_row(
                c["type"], c["status"], c["reason"], escape(c["message"]), when(c["last_transition_time"])
            )
        extra.append(conditions)
    return fields_panel(f"Project {escape(project['name'])}", rows, extra)


def related_table(items: list[Record]) -> RenderableType:
    """Resources reached by a graph walk, nearest first."""
    if not items:
        return Text("None.", style="dim")
    result = table("DEPTH", "VIA", "KIND", "NAME", "ID", "PROJECT ID?")
    for item in items:
        result.add_row(
            str(item["depth"]),
            item["via"],
            item["kind"],
            escape(item["name"]),
            item["id"],
            item.get("project_id") or "",
        )
    return result


# Operations


def progress_text(operation: Record) -> str:
    message = operation.get("progress_message") or ""
    return f"{operation['progress']}%" + (f" {message}" if message else "")


def operation_table(operations: list[Record]) -> RenderableType:
    if not operations:
        return Text("No operations.", style="dim")
    result = table("ID", "VERB", "STATE", "PROGRESS", "TARGET ID?", "CREATED?", "FINISHED?")
    for op in operations:
        result.add_row(
            op["id"],
            op["verb"],
            state_text(op["state"]),
            escape(progress_text(op)),
            op.get("target_id") or "",
            when(op["created_at"]),
            when(op.get("finished_at")),
        )
    return result


def error_text(error: Record | None) -> str:
    if not error:
        return ""
    where = f" in step {error['step']}" if error.get("step") else ""
    return f"{error['code']}: {error['message']}{where}"


def steps_table(steps: list[Record]) -> RenderableType:
    """The audit trail: one row per attempt of each step."""
    result = table("STEP", "ATTEMPT", "WORKER?", "STATE", "STARTED?", "FINISHED?", "ERROR", title="Steps")
    for step in steps:
        result.add_row(
            escape(step["name"]),
            str(step["attempt"]),
            escape(step["worker"]),
            state_text(step["state"]),
            when(step["started_at"]),
            when(step.get("finished_at")),
            escape(error_text(step.get("error"))),
        )
    return result


def operation_panel(operation: Record) -> RenderableType:
    rows: list[tuple[str, RenderableType]] = [
        ("id", operation["id"]),
        ("verb", operation["verb"]),
        ("target", f"{operation.get('target_kind') or ''} {operation.get('target_id') or ''}".strip()),
        ("project", operation.get("project_id") or ""),
        ("state", state_text(operation["state"])),
        ("progress", escape(progress_text(operation))),
        ("attempt", str(operation["attempt"])),
        ("principal", escape(operation["principal"])),
        ("request id", escape(operation.get("request_id") or "")),
        ("cancel requested", "yes" if operation["cancel_requested"] else "no"),
        ("created", when(operation["created_at"])),
        ("started", when(operation.get("started_at"))),
        ("finished", when(operation.get("finished_at"))),
    ]
    if operation.get("error"):
        rows.append(("error", Text(error_text(operation["error"]), style="red")))
    if operation.get("result") is not None:
        rows.append(("result", escape(_shorten(json.dumps(operation["result"]), 300))))
    panel = fields_panel(f"Operation {operation['id']}", rows, [])
    return Group(panel, steps_table(operation["steps"])) if operation.get("steps") else panel


# Identity: who you are, API tokens, project members, the audit trail


def whoami_panel(me: Record, project_names: Mapping[str, str] | None = None) -> RenderableType:
    """The caller: principal, admin or not, and the role held in each project (named when known)."""
    names = project_names or {}
    rows: list[tuple[str, RenderableType]] = [
        ("principal", escape(me["principal"])),
        ("name", escape(me["display_name"])),
        ("admin", "yes (every role in every project)" if me["is_admin"] else "no"),
    ]
    if me.get("token_id"):
        rows.append(("token id", me["token_id"]))
    extra: list[RenderableType] = []
    if me["roles"]:
        roles = table("PROJECT", "ID", "ROLE", title="Roles")
        for project_id, role in sorted(me["roles"].items(), key=lambda item: names.get(item[0], item[0])):
            roles.add_row(escape(names.get(project_id, "")), project_id, role)
        extra.append(roles)
    elif not me["is_admin"]:
        rows.append(("roles", Text("none: no project is visible to you yet", style="dim")))
    return fields_panel(f"Signed in as {escape(me['display_name'])}", rows, extra)


TOKEN_STATE_STYLES = {"ACTIVE": "green", "REVOKED": "red", "EXPIRED": "magenta"}


def token_state(token: Record, now: datetime | None = None) -> str:
    """ACTIVE, REVOKED or EXPIRED (at ``now``, by default the current time)."""
    if token.get("revoked_at"):
        return "REVOKED"
    expires = datetime.fromisoformat(token["expires_at"])
    return "EXPIRED" if expires <= (now or datetime.now(UTC)) else "ACTIVE"


def _token_state_text(token: Record) -> Text:
    state = token_state(token)
    return Text(state, style=TOKEN_STATE_STYLES[state])


def token_table(tokens: list[Record]) -> RenderableType:
    """API tokens; never their secrets (the API does not have them)."""
    if not tokens:
        return Text("No tokens.", style="dim")
    result = table(
        "NAME", "ID", "ROLE", "STATE", "PROJECT ID?", "HINT?", "EXPIRES?", "LAST USED?", "CREATED BY?"
    )
    for t in tokens:
        result.add_row(
            escape(t["name"]),
            t["id"],
            t["role"],
            _token_state_text(t),
            t.get("project_id") or "(global)",
            escape(f"sovra_{t['hint']}…"),
            when(t["expires_at"]),
            when(t.get("last_used_at")),
            escape(t["created_by"]),
        )
    return result


def token_panel(token: Record) -> RenderableType:
    """One token's record (without its secret: ``sovra token create`` prints that apart)."""
    rows: list[tuple[str, RenderableType]] = [
        ("id", token["id"]),
        ("name", escape(token["name"])),
        ("project", token.get("project_id") or "(global)"),
        ("role", token["role"]),
        ("state", _token_state_text(token)),
        ("expires", when(token["expires_at"])),
        ("created by", escape(token["created_by"])),
        ("created", when(token["created_at"])),
    ]
    if token.get("revoked_at"):
        rows.append(("revoked", when(token["revoked_at"])))
    return fields_panel(f"Token {escape(token['name'])}", rows, [])


def member_table(members: list[Record]) -> RenderableType:
    if not members:
        return Text("No members.", style="dim")
    result = table("SUBJECT", "ROLE", "GRANTED BY?", "SINCE?")
    for m in members:
        result.add_row(escape(m["subject"]), m["role"], escape(m["created_by"]), when(m["created_at"]))
    return result


AUDIT_RESULT_STYLES = {"success": "green", "denied": "yellow", "failure": "red"}


def audit_table(records: list[Record]) -> RenderableType:
    """Audit records as the API gives them (newest first)."""
    if not records:
        return Text("No audit records.", style="dim")
    result = table("TIME", "PRINCIPAL", "ACTION", "RESOURCE", "RESULT", "STATUS", "SOURCE?")
    result.columns[0].no_wrap = True  # a timestamp folded in two is hard to read
    for r in records:
        resource = " ".join(part for part in (r.get("resource_kind"), r.get("resource_id")) if part)
        result.add_row(
            when(r["time"]),
            escape(r["principal"]),
            escape(r["action"]),
            escape(resource),
            Text(r["result"], style=AUDIT_RESULT_STYLES.get(r["result"], "")),
            str(r.get("status_code") or ""),
            escape(r.get("source") or ""),
        )
    return result


# Images and their versions

VERSION_STATE_STYLES = {
    "importing": "yellow",
    "validating": "cyan",
    "converting": "cyan",
    "testing": "cyan",
    "active": "green",
    "deprecated": "magenta",
    "retired": "dim",
    "failed": "red",
}
SHA256_PREFIX = 12  # enough to tell versions apart in a table; `image version show` has all 64


def human_bytes(size: int | None) -> str:
    """``512 B``, ``1.5 MiB``; empty when unknown."""
    if size is None:
        return ""
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def version_state_text(state: str | None) -> Text:
    return Text(state or "", style=VERSION_STATE_STYLES.get(state or "", ""))


def _metadata_table(metadata: Mapping[str, Any], title: str = "Metadata (scs-0102)") -> ResourceTable:
    result = table("PROPERTY", "VALUE", title=title)
    for key, value in sorted(metadata.items()):
        if value is None:  # optional properties the API lists unset
            continue
        result.add_row(escape(key), escape(value if isinstance(value, str) else json.dumps(value)))
    return result


def image_table(images: list[Record]) -> RenderableType:
    if not images:
        return Text("No images.", style="dim")
    result = table("NAME", "ID", "VISIBILITY", "LABELS", "PROJECT ID?", "DESCRIPTION?", "CREATED?")
    for image in images:
        result.add_row(
            escape(image["name"]),
            image["id"],
            image["spec"].get("visibility", ""),
            escape(labels_text(image["labels"])),
            image.get("project_id") or "",
            escape(image["spec"].get("description", "")),
            when(image["created_at"]),
        )
    return result


def image_panel(image: Record, versions: list[Record] | None = None) -> RenderableType:
    """One image; its versions below when given."""
    spec = image["spec"]
    retention = spec.get("retention") or {}
    rows: list[tuple[str, RenderableType]] = [
        ("id", image["id"]),
        ("name", escape(image["name"])),
        ("project", image.get("project_id") or ""),
        ("visibility", spec.get("visibility", "")),
        ("description", escape(spec.get("description", ""))),
        ("labels", escape(labels_text(image["labels"]))),
        ("state", state_text(image["status"]["state"])),
        ("version", str(image["version"])),
        ("created", when(image["created_at"])),
        ("updated", when(image["updated_at"])),
    ]
    if retention:
        hide = ", hide superseded" if retention.get("hide_superseded") else ""
        rows.insert(6, ("retention", f"keep last {retention.get('keep_last')} active{hide}"))
    extra: list[RenderableType] = []
    if versions is not None:
        extra.append(image_version_table(versions) if versions else Text("No versions.", style="dim"))
    return fields_panel(f"Image {escape(image['name'])}", rows, extra)


def version_format(version: Record) -> str:
    """``qcow2``, or ``raw→qcow2`` when the uploaded format was converted."""
    facts = version.get("facts") or {}
    source = facts.get("source_format") or version["spec"].get("source", {}).get("declared_format")
    disk = facts.get("disk_format")
    if source and disk and source != disk:
        return f"{source}→{disk}"
    return str(disk or source or "")


def image_version_table(versions: list[Record]) -> RenderableType:
    if not versions:
        return Text("No versions.", style="dim")
    result = table("VERSION", "STATE", "FORMAT", "SIZE", "SHA256", "CREATED?", "ID?", title="Versions")
    for v in versions:
        facts = v.get("facts") or {}
        result.add_row(
            escape(v["spec"]["version"]),
            version_state_text(v["state"]),
            version_format(v),
            human_bytes(facts.get("size")),
            (facts.get("sha256") or "")[:SHA256_PREFIX],
            when(v["created_at"]),
            v["id"],
        )
    return result


def _source_text(source: Mapping[str, Any]) -> str:
    declared = [
        f"{name} {source[key]}"
        for name, key in (("format", "declared_format"), ("sha256", "declared_sha256"))
        if source.get(key)
    ]
    where = f"url {source['url']}" if source.get("type") == "url" else "upload"
    return where + (f" (declared {', '.join(declared)})" if declared else "")


def _boot_test_text(boot_test: Mapping[str, Any]) -> str:
    if not boot_test.get("enabled", True):
        return "disabled"
    return f"marker /{boot_test.get('marker', '')}/, {boot_test.get('timeout_seconds', '')}s timeout"


def image_version_panel(version: Record) -> RenderableType:
    spec, facts = version["spec"], version.get("facts") or {}
    rows: list[tuple[str, RenderableType]] = [
        ("id", version["id"]),
        ("name", escape(version["name"])),
        ("image", version["image_id"]),
        ("version", escape(spec["version"])),
        ("state", version_state_text(version["state"])),
        ("operation", version.get("operation_id") or ""),
        ("source", escape(_source_text(spec.get("source") or {}))),
        ("format", version_format(version)),
        ("size", human_bytes(facts.get("size"))),
        ("virtual size", human_bytes(facts.get("virtual_size"))),
        ("disk size", human_bytes(facts.get("disk_size"))),
        ("sha256", facts.get("sha256") or ""),
        ("disk blob", facts.get("disk_blob") or ""),
        ("boot test", escape(_boot_test_text(spec.get("boot_test") or {}))),
        ("created", when(version["created_at"])),
        ("updated", when(version["updated_at"])),
    ]
    if facts.get("failure_reason"):
        rows.append(("failure", Text(facts["failure_reason"], style="red")))
    if facts.get("boot_log_tail"):
        tail = facts["boot_log_tail"].strip().splitlines()[-5:]
        rows.append(("boot log", Text("\n".join(tail), style="dim")))
    extra: list[RenderableType] = [_metadata_table(spec.get("metadata") or {})]
    return fields_panel(f"Image version {escape(version['name'])}", rows, extra)


def build_panel(result: Record) -> RenderableType:
    """What ``sovra image build`` made: the file, its sizes and digest, the suggested metadata."""
    rows: list[tuple[str, RenderableType]] = [
        ("file", escape(str(result["path"]))),
        ("format", str(result["format"])),
        ("size", human_bytes(result["size"])),
        ("virtual size", human_bytes(result["virtual_size"])),
        ("kernel", escape(str(result["kernel_version"]))),
        ("sha256", str(result["sha256"])),
    ]
    extra: list[RenderableType] = [_metadata_table(result.get("metadata") or {}, "Suggested metadata")]
    return fields_panel("Built image", rows, extra)


# Signing keys, signatures and the image lifecycle


def signing_key_table(keys: list[Record]) -> RenderableType:
    """A project's trusted keys: never anything secret (the API only holds public keys)."""
    if not keys:
        return Text("No trusted signing keys.", style="dim")
    result = table("NAME", "ID", "FINGERPRINT", "CREATED?")
    for key in keys:
        result.add_row(escape(key["name"]), key["id"], key["fingerprint"], when(key["created_at"]))
    return result


def signing_key_panel(key: Record) -> RenderableType:
    rows: list[tuple[str, RenderableType]] = [
        ("id", key["id"]),
        ("name", escape(key["name"])),
        ("project", key.get("project_id") or ""),
        ("fingerprint", key["fingerprint"]),
        ("created", when(key["created_at"])),
    ]
    pem = Text(str(key.get("public_key_pem") or "").strip(), style="dim")
    return fields_panel(f"Signing key {escape(key['name'])}", rows, [pem])


def signature_table(checks: list[Record]) -> RenderableType:
    """One row per signature of a version: valid or not, the key that verified it, or why not."""
    if not checks:
        return Text("The version carries no signature.", style="dim")
    result = table("#", "VALID", "KEY", "DETAIL")
    for check in checks:
        valid = Text("yes", style="green") if check["valid"] else Text("no", style="red")
        result.add_row(str(check["index"]), valid, check.get("key") or "", escape(check.get("detail") or ""))
    return result


def lifecycle_panel(plan: Record, names: Mapping[str, str], applied: bool = False) -> RenderableType:
    """What retention and deprecation do next (or just did), and the versions hidden from lists.

    ``names`` maps version ids to their version strings, for the hidden ones.
    """
    parts: list[RenderableType] = []
    if plan["actions"]:
        result = table(
            "VERSION", "NOW", "NEXT", "REASON", "AFFECTED SERVERS", title="Applied" if applied else "Plan"
        )
        for action in plan["actions"]:
            servers = ", ".join(s.get("name") or s["id"] for s in action.get("affected_servers") or [])
            result.add_row(
                escape(action["version"]),
                version_state_text(action["current"]),
                version_state_text(action["target"]),
                escape(action["reason"]),
                escape(servers) if servers else Text("none", style="dim"),
            )
        parts.append(result)
    else:
        parts.append(Text("Nothing to do: every version is where its policy wants it.", style="dim"))
    hidden = [names.get(version_id, version_id) for version_id in plan.get("hidden") or []]
    if hidden:
        parts.append(Text(f"Hidden from default lists (superseded): {', '.join(hidden)}"))
    return Group(*parts)
