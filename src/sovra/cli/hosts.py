"""``sovra host``: hypervisor hosts, registered by libvirt URI (admins only).

Registering (and ``refresh``) starts a ``host.refresh`` operation that reads the host's inventory
over libvirt; ``--wait`` follows it with a progress display and then shows the host. Hosts are
addressed by name or id.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.text import Text

from sovra.cli.client import EXIT_API_ERROR, ApiError, CliError, Record, SovraClient, UrlOption, connect
from sovra.cli.lookup import item_path, resolve
from sovra.cli.operations import (
    DEFAULT_TIMEOUT,
    TimeoutOption,
    failure_message,
    follow,
    operation_path,
    progress_console,
    progress_display,
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
    operation_panel,
    print_json,
    print_result,
    table,
    when,
)
from sovra.cli.projects import LabelOption, parse_labels
from sovra.domain.host import HostState

app = typer.Typer(
    cls=CommandGroup, help="Hypervisor hosts, reached over libvirt (admins only).", no_args_is_help=True
)

COLLECTION = "/v1/hosts"
MIB = 1024 * 1024
GIB = 1024 * MIB
HOST_STATE_STYLES = {
    HostState.ENABLED: "green",
    HostState.REGISTERING: "cyan",
    HostState.DISABLED: "yellow",
    HostState.MAINTENANCE: "magenta",
    HostState.DOWN: "red",
}
HostRef = Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="The host's name or id.")]
WaitOption = Annotated[
    bool, typer.Option("--wait", help="Follow the inventory read until it ends, then show the host.")
]


# -- rendering -------------------------------------------------------------------------------------------


def _state(host: Record) -> Text:
    return Text(host["state"], style=HOST_STATE_STYLES.get(host["state"], ""))


def _used_of(host: Record, key: str, unit: int = 1) -> str:
    """``used/capacity`` of one resource (``usage`` is shown when the API reports it)."""
    capacity = (host.get("capacity") or {}).get(key)
    if capacity is None:
        return ""
    used = (host.get("usage") or {}).get(key)
    shown = [human_bytes(v * unit) if unit > 1 else str(v) for v in (used, capacity) if v is not None]
    return "/".join(shown)


def host_table(hosts: list[Record]) -> RenderableType:
    if not hosts:
        return Text("No hosts.", style="dim")
    result = table("NAME", "STATE", "ACCELERATOR", "VCPUS", "RAM", "SERVERS?", "ID?", "URI?")
    for h in hosts:
        result.add_row(
            escape(h["name"]),
            _state(h),
            (h.get("inventory") or {}).get("accelerator", ""),
            _used_of(h, "vcpus"),
            _used_of(h, "memory_mib", MIB),
            str((h.get("usage") or {}).get("servers", "")),
            h["id"],
            escape(h["spec"]["uri"]),
        )
    return result


def host_panel(host: Record) -> RenderableType:
    inventory = host.get("inventory") or {}
    ratios = host["spec"]["allocation_ratios"]
    rows: list[tuple[str, RenderableType]] = [
        ("id", host["id"]),
        ("name", escape(host["name"])),
        ("uri", escape(host["spec"]["uri"])),
        ("state", _state(host)),
        ("chosen state", host["spec"]["admin_state"]),
        ("ratios", f"cpu {ratios['cpu']:g}, ram {ratios['ram']:g}, disk {ratios['disk']:g}"),
        ("vCPUs", _used_of(host, "vcpus")),
        ("RAM", _used_of(host, "memory_mib", MIB)),
        ("disk", _used_of(host, "disk_gib", GIB)),
        ("servers", str((host.get("usage") or {}).get("servers", ""))),
    ]
    if host.get("reason"):
        rows.insert(4, ("reason", Text(host["reason"], style="red")))
    rows += [
        (name, escape(str(inventory[key])))
        for name, key in (
            ("accelerator", "accelerator"),
            ("arch", "arch"),
            ("cpu model", "cpu_model"),
            ("physical cpus", "cpus"),
            ("hostname", "hostname"),
            ("libvirt", "libvirt_version"),
        )
        if key in inventory
    ]
    rows += [
        ("last seen", when(host.get("last_seen"))),
        ("operation", host.get("operation_id") or ""),
        ("labels", escape(labels_text(host["labels"]))),
        ("version", str(host["version"])),
        ("created", when(host["created_at"])),
    ]
    return fields_panel(f"Host {escape(host['name'])}", rows, [])


# -- following the inventory read ------------------------------------------------------------------------


def wait_for_inventory(
    client: SovraClient,
    host: Record,
    operation_id: str,
    timeout: float,
    output: OutputFormat,
    display: Console | None = None,
) -> None:
    """Wait for ``host.refresh`` to end, with a progress display on ``display`` (by default stderr
    when it is a terminal); a failure or a timeout is a ``CliError`` that says what to do next."""
    operation = client.get(operation_path(operation_id))
    progress = progress_display(operation, display or progress_console(output))
    final = follow(client, operation, timeout, progress)
    if final["state"] != "SUCCEEDED":
        name = host["name"]
        raise CliError(
            failure_message(final),
            hint=f"check that the workers reach libvirt at {host['spec']['uri']} (network, TLS or SSH "
            f"keys), then `sovra host refresh {name} --wait`; `sovra host show {name}` has the reason",
            exit_code=EXIT_API_ERROR,
        )


# -- commands --------------------------------------------------------------------------------------------


@app.command()
def register(
    name: Annotated[str, typer.Argument(help="1 to 63 letters, digits, '.', '_' or '-'.")],
    uri: Annotated[
        str, typer.Argument(help="libvirt URI: qemu:///system, qemu+tls://HOST/system, qemu+ssh://…")
    ],
    cpu_ratio: Annotated[
        float | None, typer.Option("--cpu-ratio", metavar="RATIO", help="vCPUs per physical CPU (default 4).")
    ] = None,
    ram_ratio: Annotated[
        float | None, typer.Option("--ram-ratio", metavar="RATIO", help="RAM overcommit (default 1).")
    ] = None,
    disk_ratio: Annotated[
        float | None, typer.Option("--disk-ratio", metavar="RATIO", help="Disk overcommit (default 1).")
    ] = None,
    label: LabelOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Register a host; Sovra then reads its inventory (CPUs, RAM, disk, accelerator) over libvirt."""
    given = {"cpu": cpu_ratio, "ram": ram_ratio, "disk": disk_ratio}
    spec: dict[str, Any] = {
        "uri": uri,
        "allocation_ratios": {k: v for k, v in given.items() if v is not None},
    }
    with connect(url) as client:
        host = client.post(COLLECTION, {"name": name, "labels": parse_labels(label), "spec": spec})
        if wait:
            wait_for_inventory(client, host, host["operation_id"], timeout, output)
            host = client.get(item_path(COLLECTION, host["id"]))
    emit(output, host, host_panel)
    if not wait:
        note(f"Reading its inventory: follow it with `sovra op wait {host['operation_id']}`.")


@app.command("list")
def list_hosts(
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Hosts with their state, accelerator, and vCPUs and RAM (used/capacity)."""
    with connect(url) as client:
        items = client.list_all(COLLECTION, None, limit)
    emit(output, items, host_table)


def _resolve(client: SovraClient, ref: str) -> Record:
    return resolve(client, COLLECTION, ref, what="host", command="host")


@app.command()
def show(ref: HostRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """One host: its state, inventory, capacity and allocation ratios."""
    with connect(url) as client:
        host = _resolve(client, ref)
    emit(output, host, host_panel)


def _set_state(ref: str, state: HostState, output: OutputFormat, url: str | None) -> None:
    """Change the state the operator chose; sent with If-Match, so a concurrent change is not lost."""
    with connect(url) as client:
        host = _resolve(client, ref)
        changed = client.patch(
            item_path(COLLECTION, host["id"]),
            {"spec": {**host["spec"], "admin_state": str(state)}},
            headers={"If-Match": f'"{host["version"]}"'},
        )
    emit(output, changed, host_panel)
    if changed["state"] != state:
        note(f"The host is {changed['state']}: it becomes {state} once libvirt answers.")


@app.command()
def enable(ref: HostRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """Let the host take new servers."""
    _set_state(ref, HostState.ENABLED, output, url)


@app.command()
def disable(ref: HostRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """Take no new servers; the ones there keep running."""
    _set_state(ref, HostState.DISABLED, output, url)


@app.command()
def maintenance(ref: HostRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """Operator work ahead: take no new servers, and expect the ones there to move."""
    _set_state(ref, HostState.MAINTENANCE, output, url)


@app.command()
def refresh(
    ref: HostRef,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Read the host's inventory again now (the health check does so every 30 s).

    Without --wait it prints the operation; with --wait it follows it, then shows the host.
    """
    with connect(url) as client:
        host = _resolve(client, ref)
        operation = client.post(f"{item_path(COLLECTION, host['id'])}:refresh")
        if wait:
            wait_for_inventory(client, host, operation["id"], timeout, output)
            host = client.get(item_path(COLLECTION, host["id"]))
    if wait:
        emit(output, host, host_panel)
        return
    emit(output, operation, operation_panel)
    note(f"Follow it with `sovra op wait {operation['id']}`.")


@app.command()
def delete(ref: HostRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """Forget a host; refused while servers run on it or an operation works on it."""
    with connect(url) as client:
        host = _resolve(client, ref)
        try:
            client.delete(item_path(COLLECTION, host["id"]))
        except ApiError as exc:
            if exc.status != 409:
                raise
            blocking = exc.extensions.get("blocking_operation")
            hint = (
                f"wait for it with `sovra op wait {blocking}`, then delete again"
                if blocking
                else "move or delete its servers first; `sovra host disable` keeps new ones away meanwhile"
            )
            raise ApiError(exc.problem, hint=hint) from None
    if output is OutputFormat.JSON:
        print_json(host)
        return
    print_result(f"Deleted host {escape(host['name'])} ({host['id']}).")
