"""``sovra audit``: the audit trail of every mutating API call, newest first.

Tenants see the records of their projects; admins see everything, global calls included.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from sovra.cli.client import UrlOption, connect
from sovra.cli.output import OutputFormat, OutputOption, audit_table, emit, note
from sovra.cli.projects import resource_id_of

DEFAULT_LIMIT = 100
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC unless it has an offset), or a duration such as ``30m`` meaning that
    long before ``now``; ``ValueError`` for anything else."""
    text = value.strip()
    duration = _DURATION.fullmatch(text.lower())
    try:
        if duration:
            amount, unit = duration.groups()
            return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
        moment = datetime.fromisoformat(text)
    except (OverflowError, ValueError):
        raise ValueError(
            f"{value!r} is neither an ISO 8601 time (e.g. 2025-05-01T12:00:00Z) "
            "nor a duration like 30m, 1h or 2d"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _time_option(value: str | None) -> str | None:
    """The option's value as an ISO timestamp with offset (what the API expects); usage error if malformed."""
    if value is None:
        return None
    try:
        return parse_time(value).isoformat()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def show_audit(
    project: Annotated[
        str | None,
        typer.Option("--project", "-p", metavar="NAME_OR_ID", help="Only this project's records."),
    ] = None,
    principal: Annotated[
        str | None,
        typer.Option("--principal", metavar="PRINCIPAL", help="Only this caller's (e.g. token:<id>)."),
    ] = None,
    resource: Annotated[
        str | None, typer.Option("--resource", metavar="ID", help="Only those on this resource.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="TIME",
            callback=_time_option,
            help="At or after: ISO 8601 (UTC unless an offset is given) or a duration ago: 30m, 1h, 2d.",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="TIME", callback=_time_option, help="Before this time (as --since)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = (
        DEFAULT_LIMIT
    ),
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Who did what, when, to which resource, and how it ended: every mutating call, newest first."""
    params = {"principal": principal, "resource_id": resource, "since": since, "until": until}
    with connect(url) as client:
        if project is not None:  # an id is used as given: the records outlive a deleted project
            params["project_id"] = resource_id_of(client, project)
        records = client.list_all("/v1/audit", params, limit + 1)
    emit(output, records[:limit], audit_table)
    if len(records) > limit:
        note(f"[dim]Showing the newest {limit}; narrow with --since/--until or raise --limit.[/]")


def register(app: typer.Typer) -> None:
    app.command("audit")(show_audit)
