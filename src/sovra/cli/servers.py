"""``sovra server``: virtual machines: create, list, show, power actions, resize, rebuild, snapshot,
console and delete.

Servers, projects, images and server groups are addressed by name or id; an image as
``IMAGE[:VERSION]`` (without a version, the API boots the image's newest active one). Every change
is an operation: without ``--wait`` a command prints it and returns at once; with ``--wait`` it
follows it (a spinner with the current step and the server's state, while stderr is a terminal)
and ends with the server as it is then. A failed operation prints the server's fault and exits 1.

``--output json`` prints API objects: the server (``create``, ``show``, and every command with
``--wait``), the operation (actions without ``--wait``, and ``delete --wait``, after which no server
is left), the console log.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from time import sleep
from typing import Annotated

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from sovra.cli.client import (
    EXIT_API_ERROR,
    EXIT_USAGE,
    ApiError,
    CliError,
    Record,
    SovraClient,
    UrlOption,
    connect,
)
from sovra.cli.identity import ProjectOption
from sovra.cli.images import _display, resolve_image, resolve_version
from sovra.cli.lookup import item_path, resolve
from sovra.cli.operations import (
    DEFAULT_TIMEOUT,
    TimeoutOption,
    Updated,
    failure_message,
    follow,
    operation_path,
)
from sovra.cli.output import (
    CommandGroup,
    OutputFormat,
    OutputOption,
    emit,
    fields_panel,
    human_bytes,
    labels_text,
    note,
    print_json,
    print_result,
    table,
    when,
)
from sovra.cli.projects import LabelOption, parse_labels, project_path, resource_id_of
from sovra.domain.ids import is_id
from sovra.domain.server import MAX_USER_DATA_BYTES

app = typer.Typer(
    cls=CommandGroup, help="Servers: virtual machines booted from an image version.", no_args_is_help=True
)

COLLECTION = "/v1/servers"
MIB = 1024 * 1024
MAX_CONSOLE_BYTES = 1024 * 1024  # what the API returns at most
DEFAULT_CONSOLE_BYTES = 64 * 1024
FOLLOW_SECONDS = 1.0
SERVER_STATE_STYLES = {
    "ACTIVE": "green",
    "BUILDING": "cyan",
    "REBOOTING": "cyan",
    "RESIZING": "cyan",
    "SHUTOFF": "yellow",
    "DELETING": "magenta",
    "ERROR": "red",
}

ServerRef = Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="The server's name or id.")]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait", help="Follow the operation to its end, then show the server (exit 1 if it failed)."
    ),
]
ImageOption = Annotated[
    str,
    typer.Option(
        "--image",
        metavar="IMAGE[:VERSION]",
        help="Image name or id, optionally with a version (default: its newest active one), "
        "or an image version id.",
    ),
]


# -- rendering -------------------------------------------------------------------------------------------


def server_state_text(state: str | None) -> Text:
    return Text(state or "", style=SERVER_STATE_STYLES.get(state or "", ""))


def age(created_at: str, now: datetime | None = None) -> str:
    """How long ago ``created_at`` was, in its largest unit: ``42s``, ``5m``, ``3h``, ``12d``."""
    seconds = max(0, int(((now or datetime.now(UTC)) - datetime.fromisoformat(created_at)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _named(fact: Record | None) -> str:
    return str((fact or {}).get("name") or "")


def _flavor_text(flavor: Record | None) -> str:
    """``SCS-1V-2: 1 vCPU, 2.0 GiB RAM, 20 GiB disk``."""
    if not flavor:
        return ""
    disk = f"{flavor['disk_gib']} GiB disk" if flavor.get("disk_gib") else "disk sized by the image"
    ram = human_bytes(flavor["ram_mib"] * MIB)
    return f"{flavor['name']}: {flavor['vcpus']} vCPU, {ram} RAM, {disk}"


def _power_text(server: Record) -> str:
    """What the hypervisor says, and what was asked for when that differs."""
    power = server.get("power_state") or "unknown"
    wanted = "running" if server["desired_power_state"] == "running" else "shutoff"
    return power if power == wanted else f"{power} (wanted: {wanted})"


def fault_text(fault: Record) -> str:
    return f"{fault.get('code', 'ERROR')}: {fault.get('message', '')}"


def server_table(servers: list[Record]) -> RenderableType:
    if not servers:
        return Text("No servers.", style="dim")
    result = table("NAME", "ID", "STATE", "POWER", "FLAVOR", "IMAGE", "AGE", "PROJECT ID?", "LABELS?")
    for s in servers:
        result.add_row(
            escape(s["name"]),
            s["id"],
            server_state_text(s["state"]),
            s.get("power_state") or "",
            escape(_named(s.get("flavor"))),
            escape(_named(s.get("image"))),
            age(s["created_at"]),
            s["project_id"],
            escape(labels_text(s["labels"])),
        )
    return result


def server_panel(server: Record) -> RenderableType:
    rows: list[tuple[str, RenderableType]] = [
        ("id", server["id"]),
        ("name", escape(server["name"])),
        ("project", server["project_id"]),
        ("state", server_state_text(server["state"])),
        ("power", _power_text(server)),
        ("flavor", escape(_flavor_text(server.get("flavor")))),
        ("image", escape(_named(server.get("image")))),
        ("hostname", escape(server["hostname"])),
        ("ssh keys", str(server["key_count"])),
        ("user data", human_bytes(server["user_data_bytes"]) if server["user_data_bytes"] else "none"),
    ]
    if server.get("fault") and server["state"] == "ERROR":
        rows.insert(4, ("fault", Text(fault_text(server["fault"]), style="red")))
    optional = (
        ("host", _named(server.get("host"))),
        ("server group", server.get("server_group_id") or ""),
        ("description", server.get("description") or ""),
        ("labels", labels_text(server["labels"])),
        ("operation", server.get("operation_id") or ""),
    )
    rows += [(name, escape(value)) for name, value in optional if value]
    rows += [("created", when(server["created_at"])), ("updated", when(server["updated_at"]))]
    extra: list[RenderableType] = []
    if server.get("conditions"):
        conditions = table("CONDITION", "STATUS", "REASON", "MESSAGE?", "SINCE?")
        for c in server["conditions"]:
            conditions.add_row(
                c["type"], c["status"], c["reason"], escape(c["message"]), when(c["last_transition_time"])
            )
        extra.append(conditions)
    return fields_panel(f"Server {escape(server['name'])}", rows, extra)


# -- finding servers and what they refer to --------------------------------------------------------------


def server_path(server_id: str) -> str:
    return item_path(COLLECTION, server_id)


def resolve_server(client: SovraClient, ref: str, project: str | None) -> Record:
    project_id = resource_id_of(client, project) if project else None
    return resolve(client, COLLECTION, ref, what="server", command="server", project_id=project_id)


def image_ref(client: SovraClient, ref: str) -> str:
    """What the API's ``image`` field takes for ``IMAGE[:VERSION]``: the version's id when a version
    is given, else the image's id (the API then boots its newest active version). A bare id goes
    through as it is: the API accepts image ids and image version ids."""
    name, has_version, version = ref.partition(":")  # image names and versions never hold ':'
    if not has_version and is_id(ref.lower()):
        return ref.lower()
    try:
        image = resolve_image(client, name)
    except CliError as exc:
        if isinstance(exc, ApiError) or exc.exit_code != EXIT_USAGE:  # not the "named in N projects" one
            raise
        raise CliError(
            exc.message, hint="give the image's id instead (`sovra image list` shows them)"
        ) from None
    return str(resolve_version(client, image, version)["id"] if has_version else image["id"])


def _server_group_id(client: SovraClient, ref: str, project_id: str) -> str:
    group = resolve(
        client, "/v1/server-groups", ref, what="server group", command="server-group", project_id=project_id
    )
    return str(group["id"])


def _read_user_data(path: Path) -> str:
    try:
        data = path.read_bytes()
        text = data.decode()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text; cloud-init user data must be") from None
    if len(data) > MAX_USER_DATA_BYTES:
        raise CliError(
            f"{path} holds {human_bytes(len(data))}; user data may hold {human_bytes(MAX_USER_DATA_BYTES)}",
            hint="an `#include URL` line makes cloud-init fetch the rest; nothing was sent",
        )
    return text


def _server_or_none(client: SovraClient, server_id: str) -> Record | None:
    """The server as it is now; None once it is gone (after a delete)."""
    try:
        server: Record = client.get(server_path(server_id))
    except ApiError as exc:
        if exc.status != 404:
            raise
        return None
    return server


# -- following an operation ------------------------------------------------------------------------------


def current_step(operation: Record) -> str:
    """The step running now (or the last one that ran); what the operation waits for otherwise."""
    steps = operation.get("steps") or []
    running = [s["name"] for s in steps if s["state"] == "RUNNING"]
    if running:
        return f"step {running[-1]}"
    if steps:
        return f"step {steps[-1]['name']}"
    return "waiting for a worker" if operation["state"] == "PENDING" else operation["state"].lower()


@contextmanager
def progress_display(
    server: Record, read_state: Callable[[], str], display: Console | None
) -> Iterator[Updated]:
    """A spinner on ``display`` with the server's state (from ``read_state``) and the operation's
    current step, fed by the callback this yields; nothing at all without a display."""
    if display is None:
        yield lambda _: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=display, transient=True) as progress:
        task = progress.add_task(escape(server["name"]))

        def updated(operation: Record) -> None:
            description = f"{server['name']} {read_state()} · {operation['verb']} {current_step(operation)}"
            progress.update(task, description=escape(description))

        yield updated


def wait_for(
    client: SovraClient, server: Record, operation: Record, timeout: float, output: OutputFormat
) -> Record:
    """Follow ``operation`` to its end (with a progress display for people); the ended operation."""

    def read_state() -> str:
        current = _server_or_none(client, server["id"])
        return str(current["state"]) if current else "deleted"

    return follow(
        client,
        operation,
        timeout,
        _started(progress_display(server, read_state, _display(output)), operation),
        interrupted_hint=f"`sovra server show {server['name']}` shows it",
        timeout_detail=lambda last: f"{current_step(last)}; server {server['name']} is {read_state()}",
    )


@contextmanager
def _started(progress: AbstractContextManager[Updated], operation: Record) -> Iterator[Updated]:
    """``progress``, already showing ``operation`` before the first poll."""
    with progress as updated:
        updated(operation)
        yield updated


def _failure(server: Record, current: Record | None, operation: Record) -> CliError:
    """What went wrong, from the server's fault when it has one, and what to do next."""
    name = server["name"]
    message = failure_message(operation)
    if current is not None and current["state"] == "ERROR" and current.get("fault"):
        message = f"server {name} is ERROR: {fault_text(current['fault'])} (operation {operation['id']})"
    hint = f"`sovra op show {operation['id']}` shows each step and its error"
    if current is not None and current["state"] == "ERROR":
        hint += (
            f"; `sovra server reboot {name} --hard` may recover it, `sovra server delete {name}` removes it"
        )
    return CliError(message, hint=hint, exit_code=EXIT_API_ERROR)


def report_outcome(client: SovraClient, server: Record, operation: Record, output: OutputFormat) -> None:
    """Show the server after ``operation`` ended (or the operation, when it deleted the server);
    raise the exit-1 error with the server's fault unless the operation succeeded."""
    current = _server_or_none(client, server["id"])
    succeeded = operation["state"] == "SUCCEEDED"
    if current is not None:
        emit(output, current, server_panel)
    elif succeeded and output is OutputFormat.JSON:
        print_json(operation)
    elif succeeded:
        print_result(f"Deleted server {escape(server['name'])} ({server['id']}).")
    if not succeeded:
        raise _failure(server, current, operation)


def wait_and_show(
    client: SovraClient, server: Record, operation: Record, timeout: float, output: OutputFormat
) -> None:
    note(f"Server {server['name']}: waiting for operation {operation['id']} ({operation['verb']}).")
    report_outcome(client, server, wait_for(client, server, operation, timeout, output), output)


# -- actions: queue one, then report it or wait for it ---------------------------------------------------


def queue_action(client: SovraClient, server: Record, action: str, body: Record | None = None) -> Record:
    """Ask for ``action`` (``delete`` or a ``:verb``); a refusal says what stands in the way."""
    path = server_path(server["id"])
    try:
        operation: Record = (
            client.delete(path) if action == "delete" else client.post(f"{path}:{action}", body)
        )
    except ApiError as exc:
        if exc.status != 409:
            raise
        blocking = exc.extensions.get("blocking_operation")
        hint = (
            f"another operation works on it: wait for it with `sovra op wait {blocking}`, then try again"
            if blocking
            else f"`sovra server show {server['name']}` shows its state"
        )
        raise ApiError(exc.problem, hint=hint) from None
    return operation


def run_action(
    client: SovraClient,
    server: Record,
    action: str,
    body: Record | None,
    *,
    wait: bool,
    timeout: float,
    output: OutputFormat,
) -> None:
    """Queue ``action`` on ``server``, then wait for it or print the operation."""
    operation = queue_action(client, server, action, body)
    if wait:
        wait_and_show(client, server, operation, timeout, output)
        return
    if output is OutputFormat.JSON:
        print_json(operation)
        return
    print_result(
        f"Server {escape(server['name'])}: operation {operation['id']} ({operation['verb']}) "
        f"is {operation['state']}."
    )
    note(f"Follow it with `sovra op wait {operation['id']}`.")


def act(
    ref: str,
    action: str,
    body: Record | None,
    *,
    project: str | None,
    wait: bool,
    timeout: float,
    output: OutputFormat,
    url: str | None,
) -> None:
    """The whole of a simple action command: find the server, then ``run_action``."""
    with connect(url) as client:
        server = resolve_server(client, ref, project)
        run_action(client, server, action, body, wait=wait, timeout=timeout, output=output)


# -- commands --------------------------------------------------------------------------------------------


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="1 to 63 letters, digits, '.', '_' or '-'.")],
    project: Annotated[
        str, typer.Option("--project", "-p", metavar="NAME_OR_ID", help="The project that owns it.")
    ],
    image: ImageOption,
    flavor: Annotated[
        str, typer.Option("--flavor", metavar="FLAVOR", help="Flavor name (e.g. SCS-1V-2) or id.")
    ],
    key: Annotated[
        list[str] | None,
        typer.Option("--key", metavar="NAME", help="Key pair whose public key goes in; repeatable."),
    ] = None,
    user_data: Annotated[
        Path | None,
        typer.Option(
            "--user-data",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            readable=True,
            help=f"cloud-init user data (at most {MAX_USER_DATA_BYTES // 1024} KiB).",
        ),
    ] = None,
    server_group: Annotated[
        str | None, typer.Option("--server-group", metavar="NAME_OR_ID", help="Join this server group.")
    ] = None,
    stopped: Annotated[bool, typer.Option("--stopped", help="Create it powered off.")] = False,
    hostname: Annotated[
        str | None,
        typer.Option("--hostname", help="The guest's host name (default: NAME, made a valid host name)."),
    ] = None,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    label: LabelOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Create a server: scheduled on a host, its disk made from the image, then booted (an operation)."""
    body: Record = {
        "name": name,
        "flavor": flavor,
        "key_names": key or [],
        "power_state": "stopped" if stopped else "running",
        "labels": parse_labels(label),
        "user_data": _read_user_data(user_data) if user_data is not None else None,
        "hostname": hostname,
        "description": description or "",
    }
    with connect(url) as client:
        project_id = resource_id_of(client, project)
        body["image"] = image_ref(client, image)
        if server_group is not None:
            body["server_group_id"] = _server_group_id(client, server_group, project_id)
        server: Record = client.post(f"{project_path(project_id)}/servers", body)
        if wait:
            wait_and_show(client, server, client.get(operation_path(server["operation_id"])), timeout, output)
            return
    emit(output, server, server_panel)
    note(f"Building: follow it with `sovra op wait {server['operation_id']}`.")


@app.command("list")
def list_servers(
    project: ProjectOption = None,
    selector: Annotated[
        str | None, typer.Option("--selector", "-s", help="Label selector, e.g. 'env=prod,tier in (web)'.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many (default: all).")
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Servers of your projects (every page), with their state, power, flavor, image and age."""
    with connect(url) as client:
        project_id = resource_id_of(client, project) if project else None
        items = client.list_all(COLLECTION, {"project_id": project_id, "label_selector": selector}, limit)
    emit(output, items, server_table)


@app.command()
def show(
    ref: ServerRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """One server: state, power, flavor, image, fault (when in ERROR) and conditions."""
    with connect(url) as client:
        server = resolve_server(client, ref, project)
    emit(output, server, server_panel)


@app.command()
def start(
    ref: ServerRef,
    project: ProjectOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Power a stopped server on."""
    act(ref, "start", None, project=project, wait=wait, timeout=timeout, output=output, url=url)


@app.command()
def stop(
    ref: ServerRef,
    grace: Annotated[
        float | None,
        typer.Option(
            "--grace", metavar="SECONDS", min=0, max=3600, help="How long the guest may take to shut down."
        ),
    ] = None,
    project: ProjectOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Ask the guest to power off (ACPI); after the grace period the machine is switched off."""
    body = {"grace_seconds": grace} if grace is not None else None
    act(ref, "stop", body, project=project, wait=wait, timeout=timeout, output=output, url=url)


@app.command()
def reboot(
    ref: ServerRef,
    hard: Annotated[
        bool, typer.Option("--hard", help="Reset the machine instead of asking the guest (recovers ERROR).")
    ] = False,
    project: ProjectOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Reboot a server."""
    act(ref, "reboot", {"hard": hard}, project=project, wait=wait, timeout=timeout, output=output, url=url)


@app.command()
def resize(
    ref: ServerRef,
    flavor: Annotated[str, typer.Option("--flavor", metavar="FLAVOR", help="The new flavor's name or id.")],
    project: ProjectOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Give a server another flavor on the same host (it is powered off while its size changes)."""
    act(
        ref, "resize", {"flavor": flavor}, project=project, wait=wait, timeout=timeout, output=output, url=url
    )


@app.command()
def rebuild(
    ref: ServerRef,
    image: Annotated[
        str | None,
        typer.Option(
            "--image", metavar="IMAGE[:VERSION]", help="Start from this image (default: the same version)."
        ),
    ] = None,
    project: ProjectOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Start over from an image: the disk is replaced; id, name, flavor and host stay."""
    with connect(url) as client:
        server = resolve_server(client, ref, project)
        body = {"image": image_ref(client, image)} if image is not None else {}
        run_action(client, server, "rebuild", body, wait=wait, timeout=timeout, output=output)


@app.command()
def snapshot(
    ref: ServerRef,
    image: Annotated[
        str, typer.Option("--image", metavar="IMAGE", help="An image of the server's project (name or id).")
    ],
    version: Annotated[str, typer.Option("--version", metavar="VERSION", help="The new version, e.g. 2.")],
    project: ProjectOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Save the server's disk as a new version of an image; it is then tested like an upload."""
    with connect(url) as client:
        server = resolve_server(client, ref, project)
        target = resolve_image(client, image, server["project_id"])
        body = {"image_id": target["id"], "version": version}
        run_action(client, server, "snapshot", body, wait=wait, timeout=timeout, output=output)
    note(
        f"The snapshot becomes version {version} of image {target['name']}: "
        f"`sovra image version show {shlex.quote(target['name'])} {shlex.quote(version)}` follows its checks."
    )


@app.command()
def delete(
    ref: ServerRef,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    project: ProjectOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Delete a server with its disks (an operation): it is powered off first."""
    with connect(url) as client:
        server = resolve_server(client, ref, project)
        question = f"Delete server {server['name']} ({server['id']}) and its disks?"
        if not yes and not typer.confirm(question, err=True):
            note("Nothing was deleted.")
            return
        run_action(client, server, "delete", None, wait=wait, timeout=timeout, output=output)


# -- console ---------------------------------------------------------------------------------------------


def _overlap(previous: str, current: str) -> int:
    """The length of the longest prefix of ``current`` that ``previous`` ends with (Knuth-Morris-Pratt)."""
    if current.startswith(previous):
        return len(previous)
    if not current:
        return 0
    fallback = [0] * len(current)
    k = 0
    for i in range(1, len(current)):
        while k and current[i] != current[k]:
            k = fallback[k - 1]
        if current[i] == current[k]:
            k += 1
        fallback[i] = k
    matched = 0
    for char in previous:
        if matched == len(current):
            matched = fallback[matched - 1]
        while matched and char != current[matched]:
            matched = fallback[matched - 1]
        if char == current[matched]:
            matched += 1
    return matched


def new_output(previous: str, current: str) -> str:
    """What ``current`` adds to ``previous``, both being the newest part of one growing log: the
    start of ``current`` that ``previous`` already ended with was printed before."""
    return current[_overlap(previous, current) :]


def _read_console(client: SovraClient, server_id: str, max_bytes: int) -> Record:
    log: Record = client.get(f"{server_path(server_id)}/console", {"max_bytes": max_bytes})
    return log


def _write(text: str, output: OutputFormat) -> None:
    """Console output as it is (never Rich markup); as one JSON line per piece when following."""
    if output is OutputFormat.JSON:
        print(json.dumps({"output": text, "truncated": False}, ensure_ascii=False), flush=True)
    elif text:
        sys.stdout.write(text)
        sys.stdout.flush()


def follow_console(client: SovraClient, server_id: str, seen: str, tail: int, output: OutputFormat) -> None:
    """Poll the console and print what is new, until Ctrl-C."""
    try:
        while True:
            sleep(FOLLOW_SECONDS)
            current = _read_console(client, server_id, tail)["output"]
            added = new_output(seen, current)
            if added:
                _write(added, output)
            seen = current
    except KeyboardInterrupt:
        return


@app.command()
def console(
    ref: ServerRef,
    tail: Annotated[
        int,
        typer.Option(
            "--tail",
            metavar="BYTES",
            min=1,
            max=MAX_CONSOLE_BYTES,
            help="Show the newest BYTES of output; with --follow, also what each poll reads.",
        ),
    ] = DEFAULT_CONSOLE_BYTES,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output until Ctrl-C.")
    ] = False,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """The guest's serial console output, newest last.

    With --output json: the console log object; with --follow, one JSON object per line, each
    holding the output that is new.
    """
    with connect(url) as client:
        server = resolve_server(client, ref, project)
        log = _read_console(client, server["id"], tail)
        if output is OutputFormat.JSON and not follow:
            print_json(log)
            return
        _write(log["output"], output)
        if log["truncated"] and output is OutputFormat.TABLE:
            note(f"Older output was left out: --tail {min(2 * tail, MAX_CONSOLE_BYTES)} shows more.")
        if not log["output"] and not follow:
            note(f"No console output yet (server {server['name']} is {server['state']}).")
        if follow:
            follow_console(client, server["id"], log["output"], tail, output)
