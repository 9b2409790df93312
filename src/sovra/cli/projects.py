"""``sovra project``: create, list, show, update and delete projects, and walk the resource graph.

Projects are addressed by name or id: ids are UUIDs, anything else is looked up by name.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape

from sovra.cli.client import (
    EXIT_API_ERROR,
    ApiError,
    CliError,
    Record,
    SovraClient,
    UrlOption,
    connect,
)
from sovra.cli.operations import DEFAULT_TIMEOUT, TimeoutOption, wait_and_report
from sovra.cli.output import (
    CommandGroup,
    OutputFormat,
    OutputOption,
    emit,
    note,
    print_json,
    print_result,
    project_panel,
    project_table,
    related_table,
)
from sovra.domain.edges import MAX_DEPTH
from sovra.domain.ids import is_id

app = typer.Typer(cls=CommandGroup, help="Projects: the unit of tenancy.", no_args_is_help=True)


def _check_labels(values: list[str] | None) -> list[str]:
    """Reject a ``--label`` without '=' or with an empty key before anything is sent."""
    for value in values or []:
        key, sep, _ = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{value!r} is not KEY=VALUE (for example env=prod)")
    return values or []


def parse_labels(values: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` (already checked) to a dict; a repeated key keeps its last value."""
    return dict(value.split("=", 1) for value in values or [])


ProjectRef = Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="The project's name or id.")]
LabelOption = Annotated[
    list[str] | None,
    typer.Option("--label", "-l", metavar="KEY=VALUE", callback=_check_labels, help="Repeatable."),
]
DepthOption = Annotated[
    int | None, typer.Option("--depth", min=1, max=MAX_DEPTH, help="How many edges deep (default: all).")
]


def project_path(project_id: str) -> str:
    return f"/v1/projects/{quote(project_id, safe='')}"


def resolve_project(client: SovraClient, ref: str) -> Record:
    """The project ``ref`` names: by id when it is a UUID, else (or when no such id exists) by name."""
    not_found: ApiError | None = None
    if is_id(ref.lower()):
        try:
            project: Record = client.get(project_path(ref.lower()))
            return project
        except ApiError as exc:
            if exc.status != 404:
                raise
            not_found = exc
    found: Record | None = next(iter(client.get("/v1/projects", params={"name": ref})["items"]), None)
    if found is not None:
        return found
    if not_found is not None:
        raise not_found
    raise CliError(
        f"Not found: no project is named {ref!r}",
        hint="`sovra project list` shows the projects",
        exit_code=EXIT_API_ERROR,
    )


def resource_id_of(client: SovraClient, ref: str) -> str:
    """A resource id as given, or the id of the project named ``ref``."""
    return ref.lower() if is_id(ref.lower()) else str(resolve_project(client, ref)["id"])


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="1 to 63 letters, digits, '.', '_' or '-'.")],
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    label: LabelOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Create a project."""
    body: dict[str, Any] = {"name": name, "labels": parse_labels(label)}
    if description is not None:
        body["spec"] = {"description": description}
    with connect(url) as client:
        project = client.post("/v1/projects", body)
    emit(output, project, project_panel)


@app.command("list")
def list_projects(
    selector: Annotated[
        str | None,
        typer.Option("--selector", "-s", help="Label selector, e.g. 'env=prod,tier in (web,api)'."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Projects in creation order."""
    with connect(url) as client:
        projects = client.list_all("/v1/projects", {"label_selector": selector}, limit)
    emit(output, projects, project_table)


@app.command()
def show(ref: ProjectRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """One project."""
    with connect(url) as client:
        project = resolve_project(client, ref)
    emit(output, project, project_panel)


def _patch(
    current: Record, name: str | None, description: str | None, labels: dict[str, str], remove: list[str]
) -> dict[str, Any]:
    """The merge patch: new labels are added to (or replace) the current ones; removed keys go."""
    patch: dict[str, Any] = {}
    if name is not None:
        patch["name"] = name
    if description is not None:
        patch["spec"] = {"description": description}
    if labels or remove:
        merged = {**current["labels"], **labels}
        patch["labels"] = {k: v for k, v in merged.items() if k not in remove}
    return patch


@app.command()
def update(
    ref: ProjectRef,
    name: Annotated[str | None, typer.Option("--name", help="Rename the project.")] = None,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    label: LabelOption = None,
    remove_label: Annotated[
        list[str] | None, typer.Option("--remove-label", metavar="KEY", help="Repeatable.")
    ] = None,
    expect_version: Annotated[
        int | None,
        typer.Option("--expect-version", min=1, help="Fail unless the project is still at this version."),
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Change a project's name, description or labels.

    The change is sent with If-Match of the version just read (or --expect-version), so a concurrent
    change is refused rather than overwritten.
    """
    labels, remove = parse_labels(label), remove_label or []
    if name is None and description is None and not labels and not remove:
        raise CliError("nothing to update: pass --name, --description, --label or --remove-label")
    with connect(url) as client:
        current = resolve_project(client, ref)
        version = expect_version if expect_version is not None else current["version"]
        updated = client.patch(
            project_path(current["id"]),
            _patch(current, name, description, labels, remove),
            headers={"If-Match": f'"{version}"'},
        )
    emit(output, updated, project_panel)


@app.command()
def delete(
    ref: ProjectRef,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the teardown to end.")] = False,
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Idempotency key: a retry returns the same operation.")
    ] = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Tear a project down with everything it owns (an operation).

    With --wait, exit 0 once it succeeded, 1 if it failed or was cancelled, 3 after --timeout.
    """
    with connect(url) as client:
        operation = _start_delete(client, ref, request_id)
        if wait:
            note(f"Deleting project {ref}: operation {operation['id']}")
            wait_and_report(client, operation, timeout, output)
            return
    if output is OutputFormat.JSON:
        print_json(operation)
        return
    print_result(f"Deleting project {escape(ref)}: operation {operation['id']} is {operation['state']}.")
    note(f"Follow it with `sovra op wait {operation['id']}`.")


def _start_delete(client: SovraClient, ref: str, request_id: str | None) -> Record:
    """Send the DELETE; an id goes straight to the API, a name is looked up first.

    Not reading the project first keeps a retry with the same --request-id working after the
    project is gone: the API then answers with the operation that deleted it.
    """
    params = {"request_id": request_id}
    given_id = ref.lower() if is_id(ref.lower()) else None
    project_id = given_id or str(resolve_project(client, ref)["id"])
    try:
        operation: Record = client.delete(project_path(project_id), params=params)
    except ApiError as exc:
        if exc.status != 404 or given_id is None:
            raise
        # Perhaps a project whose name looks like an id; if not, this raises the API's 404.
        operation = client.delete(project_path(resolve_project(client, ref)["id"]), params=params)
    return operation


def _related(direction: str, ref: str, depth: int | None, output: OutputFormat, url: str | None) -> None:
    with connect(url) as client:
        resource_id = resource_id_of(client, ref)
        path = f"/v1/resources/{quote(resource_id, safe='')}/{direction}"
        items = client.get(path, {"depth": depth})["items"]
    emit(output, items, related_table)


@app.command()
def dependents(
    ref: Annotated[str, typer.Argument(metavar="ID", help="A resource id, or a project's name.")],
    depth: DepthOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """What depends on a resource (what breaks if it goes), nearest first."""
    _related("dependents", ref, depth, output, url)


@app.command()
def dependencies(
    ref: Annotated[str, typer.Argument(metavar="ID", help="A resource id, or a project's name.")],
    depth: DepthOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """What a resource depends on, nearest first."""
    _related("dependencies", ref, depth, output, url)


@app.command("teardown-order")
def teardown_order(ref: ProjectRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """Everything the project owns, in the order a delete removes it (the project last)."""
    with connect(url) as client:
        project = resolve_project(client, ref)
        items = client.get(f"{project_path(project['id'])}/teardown-order")["items"]
    emit(output, items, related_table)
