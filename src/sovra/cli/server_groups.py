"""``sovra server-group``: servers placed together (affinity) or apart (anti-affinity).

Servers join a group when they are created; a group with members cannot be deleted.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import RenderableType
from rich.markup import escape
from rich.text import Text

from sovra.cli.client import ApiError, Record, SovraClient, UrlOption, connect
from sovra.cli.identity import ProjectOption
from sovra.cli.lookup import item_path, resolve
from sovra.cli.output import (
    CommandGroup,
    OutputFormat,
    OutputOption,
    emit,
    fields_panel,
    labels_text,
    print_json,
    print_result,
    table,
    when,
)
from sovra.cli.projects import LabelOption, parse_labels, project_path, resource_id_of
from sovra.domain.server_group import Policy

app = typer.Typer(
    cls=CommandGroup,
    help="Server groups: servers the scheduler places on one host (affinity) or on different hosts "
    "(anti-affinity).",
    no_args_is_help=True,
)

COLLECTION = "/v1/server-groups"
GroupRef = Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="The server group's name or id.")]


def server_group_table(groups: list[Record]) -> RenderableType:
    if not groups:
        return Text("No server groups.", style="dim")
    result = table("NAME", "ID", "POLICY", "MEMBERS", "PROJECT ID?", "LABELS?", "CREATED?")
    for g in groups:
        result.add_row(
            escape(g["name"]),
            g["id"],
            g["spec"]["policy"],
            str(len(g["members"])),
            g["project_id"],
            escape(labels_text(g["labels"])),
            when(g["created_at"]),
        )
    return result


def server_group_panel(group: Record) -> RenderableType:
    rows: list[tuple[str, RenderableType]] = [
        ("id", group["id"]),
        ("name", escape(group["name"])),
        ("project", group["project_id"]),
        ("policy", group["spec"]["policy"]),
        ("labels", escape(labels_text(group["labels"]))),
        ("created", when(group["created_at"])),
    ]
    if not group["members"]:
        return fields_panel(f"Server group {escape(group['name'])}", rows, [Text("No members.", style="dim")])
    members = table("MEMBER", "ID", "KIND?", title="Members")
    for m in group["members"]:
        members.add_row(escape(m["name"]), m["id"], m["kind"])
    return fields_panel(f"Server group {escape(group['name'])}", rows, [members])


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="1 to 63 letters, digits, '.', '_' or '-'.")],
    policy: Annotated[
        Policy,
        typer.Option(
            "--policy",
            case_sensitive=False,
            help="affinity: one host for all members; anti-affinity: a different host for each. "
            "It cannot change later.",
        ),
    ],
    project: Annotated[
        str, typer.Option("--project", "-p", metavar="NAME_OR_ID", help="The project that owns it.")
    ],
    label: LabelOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Create a server group; servers join it when they are created."""
    body = {"name": name, "labels": parse_labels(label), "spec": {"policy": str(policy)}}
    with connect(url) as client:
        group = client.post(f"{project_path(resource_id_of(client, project))}/server-groups", body)
    emit(output, group, server_group_panel)


@app.command("list")
def list_groups(
    project: ProjectOption = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Server groups of your projects, with how many servers each holds."""
    with connect(url) as client:
        project_id = resource_id_of(client, project) if project else None
        items = client.list_all(COLLECTION, {"project_id": project_id}, limit)
    emit(output, items, server_group_table)


def _resolve(client: SovraClient, ref: str, project: str | None) -> Record:
    project_id = resource_id_of(client, project) if project else None
    return resolve(
        client, COLLECTION, ref, what="server group", command="server-group", project_id=project_id
    )


@app.command()
def show(
    ref: GroupRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """One server group and its members."""
    with connect(url) as client:
        group = _resolve(client, ref, project)
    emit(output, group, server_group_panel)


@app.command()
def delete(
    ref: GroupRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Delete a server group that has no members left."""
    with connect(url) as client:
        group = _resolve(client, ref, project)
        try:
            client.delete(item_path(COLLECTION, group["id"]))
        except ApiError as exc:
            if exc.status != 409:
                raise
            hint = "delete its servers first; `sovra server-group show NAME_OR_ID` lists them"
            raise ApiError(exc.problem, hint=hint) from None
    if output is OutputFormat.JSON:
        print_json(group)
        return
    print_result(f"Deleted server group {escape(group['name'])} ({group['id']}).")
