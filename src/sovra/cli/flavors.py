"""``sovra flavor``: the flavor catalogue (list, show, create, delete) and SCS name decoding.

Flavors are addressed by name or id, which the API resolves itself. ``sovra flavor parse`` works
offline: it explains an SCS flavor name (scs-0100) and the extra specs scs-0103 derives from it.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.text import Text

from sovra.cli.client import CliError, Record, UrlOption, connect
from sovra.cli.output import (
    CommandGroup,
    OutputFormat,
    OutputOption,
    emit,
    fields_panel,
    labels_text,
    note,
    print_json,
    print_result,
    state_text,
    table,
    when,
)
from sovra.cli.projects import LabelOption, parse_labels
from sovra.compute.flavor_names import FlavorNameError, parse
from sovra.domain.flavor import ScsFacts

app = typer.Typer(cls=CommandGroup, help="Flavors: the sizes servers come in.", no_args_is_help=True)

EXIT_INVALID_NAME = 1
"""``sovra flavor parse`` of a name that is not a valid SCS name."""


def _check_extra_specs(values: list[str] | None) -> list[str]:
    for value in values or []:
        key, sep, _ = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{value!r} is not KEY=VALUE (for example hw:cpu_policy=dedicated)")
    return values or []


FlavorRef = Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="The flavor's name or id.")]
ExtraSpecOption = Annotated[
    list[str] | None,
    typer.Option(
        "--extra-spec",
        "-e",
        metavar="KEY=VALUE",
        callback=_check_extra_specs,
        help="An extra spec such as hw:cpu_policy=dedicated; repeatable. SCS names get their scs: specs "
        "filled in.",
    ),
]


def flavor_path(ref: str) -> str:
    return f"/v1/flavors/{quote(ref, safe='')}"


# -- rendering -------------------------------------------------------------------------------------


def ram_text(mib: int) -> str:
    """``4 GiB``, ``0.5 GiB`` or ``1000 MiB``."""
    if mib % 512:
        return f"{mib} MiB"
    return f"{mib / 1024:g} GiB"


def disk_text(gib: int) -> str:
    return f"{gib} GiB" if gib else "as the image needs"


def flavor_table(flavors: list[Record]) -> RenderableType:
    if not flavors:
        return Text("No flavors.", style="dim")
    result = table("NAME", "ID", "VCPUS", "RAM", "DISK", "CPU TYPE?", "LABELS?", "DESCRIPTION?")
    for f in flavors:
        spec, scs = f["spec"], f.get("scs") or {}
        result.add_row(
            escape(f["name"]),
            f["id"],
            str(spec["vcpus"]),
            ram_text(spec["ram_mib"]),
            disk_text(spec["disk_gib"]),
            scs.get("cpu_type") or spec["extra_specs"].get("scs:cpu-type", ""),
            escape(labels_text(f["labels"])),
            escape(spec.get("description", "")),
        )
    return result


def _extra_specs_table(specs: dict[str, str]) -> RenderableType:
    if not specs:
        return Text("No extra specs.", style="dim")
    result = table("EXTRA SPEC", "VALUE", title="Extra specs")
    for key, value in specs.items():
        result.add_row(escape(key), escape(value))
    return result


def _scs_rows(scs: Record) -> list[tuple[str, RenderableType]]:
    rows: list[tuple[str, RenderableType]] = [
        ("means", escape(scs["meaning"])),
        ("canonical name", escape(scs["canonical_name"])),
        ("short name", escape(scs["short_name"])),
        ("v1 name", escape(scs["v1_name"])),
        ("syntax", scs["syntax"]),
        ("cpu type", scs["cpu_type"]),
        ("disk type", scs["disk_type"] or "no root disk"),
    ]
    rows.extend(("warning", Text(warning, style="yellow")) for warning in scs["warnings"])
    return rows


def flavor_panel(flavor: Record) -> RenderableType:
    spec = flavor["spec"]
    rows: list[tuple[str, RenderableType]] = [
        ("id", flavor["id"]),
        ("name", escape(flavor["name"])),
        ("vcpus", str(spec["vcpus"])),
        ("ram", ram_text(spec["ram_mib"])),
        ("disk", disk_text(spec["disk_gib"])),
        ("description", escape(spec.get("description", ""))),
        ("labels", escape(labels_text(flavor["labels"]))),
        ("state", state_text(flavor["state"])),
        ("version", str(flavor["version"])),
        ("created", when(flavor["created_at"])),
        ("updated", when(flavor["updated_at"])),
    ]
    if flavor.get("scs"):
        rows.extend(_scs_rows(flavor["scs"]))
    return fields_panel(f"Flavor {escape(flavor['name'])}", rows, [_extra_specs_table(spec["extra_specs"])])


def parse_panel(decoded: Record) -> RenderableType:
    rows = [("name", escape(decoded["name"])), *_scs_rows(decoded)]
    return Group(
        fields_panel(f"SCS flavor name {escape(decoded['name'])}", rows, []),
        _extra_specs_table(decoded["extra_specs"]),
    )


# -- commands --------------------------------------------------------------------------------------


@app.command("list")
def list_flavors(
    selector: Annotated[
        str | None, typer.Option("--selector", "-s", help="Label selector, e.g. 'sovra.io/standard'.")
    ] = None,
    vcpus_min: Annotated[
        int | None, typer.Option("--vcpus-min", min=1, help="At least this many vCPUs.")
    ] = None,
    ram_mib_min: Annotated[
        int | None, typer.Option("--ram-mib-min", min=1, help="At least this much RAM (MiB).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Flavors in creation order (the SCS standard flavors first)."""
    params = {"label_selector": selector, "vcpus_min": vcpus_min, "ram_mib_min": ram_mib_min}
    with connect(url) as client:
        flavors = client.list_all("/v1/flavors", params, limit)
    emit(output, flavors, flavor_table)


@app.command()
def show(ref: FlavorRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """One flavor, with what its SCS name states."""
    with connect(url) as client:
        flavor = client.get(flavor_path(ref))
    emit(output, flavor, flavor_panel)


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="An SCS name (e.g. SCS-4V-16-50n) or any other name.")],
    vcpus: Annotated[int, typer.Option("--vcpus", min=1, max=1024, help="Virtual CPUs.")],
    ram_mib: Annotated[int, typer.Option("--ram-mib", min=128, help="Memory in MiB (4 GiB = 4096).")],
    disk_gib: Annotated[
        int, typer.Option("--disk-gib", min=0, help="Root disk in GiB; 0: as large as the image needs.")
    ] = 0,
    extra_spec: ExtraSpecOption = None,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    label: LabelOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Add a flavor (admins only). An SCS- name must give at least what it states."""
    spec: dict[str, Any] = {
        "vcpus": vcpus,
        "ram_mib": ram_mib,
        "disk_gib": disk_gib,
        "extra_specs": parse_labels(extra_spec),
    }
    if description is not None:
        spec["description"] = description
    with connect(url) as client:
        flavor = client.post("/v1/flavors", {"name": name, "labels": parse_labels(label), "spec": spec})
    for warning in (flavor.get("scs") or {}).get("warnings", []):
        note(f"[yellow]Warning:[/] {escape(warning)}")
    emit(output, flavor, flavor_panel)


@app.command()
def delete(ref: FlavorRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """Delete a flavor (refused while servers use it)."""
    with connect(url) as client:
        flavor = client.get(flavor_path(ref))
        client.delete(flavor_path(flavor["id"]))
    if output is OutputFormat.JSON:
        print_json(flavor)
        return
    print_result(f"Deleted flavor {escape(flavor['name'])} ({flavor['id']}).")


def decode(text: str) -> Record:
    """Everything an SCS name states, as ``sovra flavor parse -o json`` prints it."""
    parsed = parse(text)
    return {
        "name": text,
        **ScsFacts.of(parsed).model_dump(),
        "extra_specs": parsed.name.extra_specs(),
        "parts": dataclasses.asdict(parsed.name),
    }


@app.command("parse")
def parse_name(
    name: Annotated[str, typer.Argument(help="An SCS flavor name, e.g. SCS-2V-4-20s.")],
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Explain an SCS flavor name (offline): what it states, its canonical, short and v1 forms, and the
    scs: extra specs it derives. Exits 1 if the name is not a valid SCS name."""
    try:
        decoded = decode(name)
    except FlavorNameError as exc:
        raise CliError(
            str(exc), hint="scs-0100 describes the naming scheme", exit_code=EXIT_INVALID_NAME
        ) from None
    emit(output, decoded, parse_panel)
