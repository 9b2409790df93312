"""``sovra keypair``: SSH key pairs whose public keys go into servers (like ``openstack keypair``).

``create`` either imports a public key file (checked here first: a private key is refused and never
sent) or has Sovra generate an Ed25519 pair and writes its private key to a new file with mode 0600.
That file is created before the request is sent, so an existing file is never overwritten and a
refused request leaves no file behind. The private key is never printed, not even with
``--output json``.

Key pairs are copied into servers when they are created: deleting one never changes a server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import RenderableType
from rich.markup import escape
from rich.text import Text

from sovra.cli.client import CliError, Record, SovraClient, UrlOption, connect
from sovra.cli.identity import ProjectOption
from sovra.cli.lookup import item_path, resolve
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
    table,
    when,
)
from sovra.cli.projects import LabelOption, parse_labels, project_path, resource_id_of
from sovra.domain.errors import InvalidArgument
from sovra.domain.keypair import MAX_PUBLIC_KEY_BYTES, parse_public_key
from sovra.domain.names import validate_name

app = typer.Typer(
    cls=CommandGroup, help="SSH key pairs: public keys that go into new servers.", no_args_is_help=True
)

COLLECTION = "/v1/keypairs"
PRIVATE_KEY_MODE = 0o600


def _check_name(value: str) -> str:
    """The name also names the default key file: a bad one is a usage error before any file is made."""
    try:
        return validate_name(value)
    except InvalidArgument as exc:
        raise typer.BadParameter(exc.detail) from None


KeyPairRef = Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="The key pair's name or id.")]


def keypair_table(keypairs: list[Record]) -> RenderableType:
    if not keypairs:
        return Text("No key pairs.", style="dim")
    result = table("NAME", "ID", "TYPE", "FINGERPRINT", "PROJECT ID?", "LABELS?", "CREATED?")
    for k in keypairs:
        result.add_row(
            escape(k["name"]),
            k["id"],
            k["spec"]["type"],
            k["spec"]["fingerprint"],
            k["project_id"],
            escape(labels_text(k["labels"])),
            when(k["created_at"]),
        )
    return result


def keypair_panel(keypair: Record) -> RenderableType:
    spec = keypair["spec"]
    rows: list[tuple[str, RenderableType]] = [
        ("id", keypair["id"]),
        ("name", escape(keypair["name"])),
        ("project", keypair["project_id"]),
        ("type", spec["type"]),
        ("fingerprint", spec["fingerprint"]),
        ("labels", escape(labels_text(keypair["labels"]))),
        ("created", when(keypair["created_at"])),
    ]
    return fields_panel(f"Key pair {escape(keypair['name'])}", rows, [Text(spec["public_key"], style="dim")])


def read_public_key(path: Path) -> str:
    """The public key line in ``path``, checked as the API checks it; a private key is refused here."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PUBLIC_KEY_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode()
        parse_public_key(text)
    except UnicodeDecodeError:
        raise CliError(f"{path} is not text: it is not an OpenSSH public key") from None
    except InvalidArgument as exc:
        raise CliError(
            f"{path}: {exc.detail}", hint="pass the .pub file, e.g. ~/.ssh/id_ed25519.pub; nothing was sent"
        ) from None
    return text


def _open_private_key_file(path: Path) -> int:
    """Create ``path`` with mode 0600, never replacing a file; its descriptor."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_KEY_MODE)
    except FileExistsError:
        raise CliError(
            f"{path} already exists; it was not overwritten and no key pair was created",
            hint="choose another --private-key-file, or move the file away",
        ) from None
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror or exc}; no key pair was created") from None
    os.fchmod(fd, PRIVATE_KEY_MODE)  # the umask may have narrowed it; never wider than 0600
    return fd


def _generate(client: SovraClient, path: str, body: dict[str, Any], key_file: Path) -> Record:
    """Create the key pair and write the private key the API answers into ``key_file``.

    Nothing is left half done: a refused request removes the (still empty) file, and a file that
    cannot be written deletes the key pair again, since no other copy of its private key exists.
    """
    handle = os.fdopen(_open_private_key_file(key_file), "w")
    try:
        created: Record = client.post(path, body)
        try:
            handle.write(created.pop("private_key"))
            handle.close()
        except OSError as exc:
            client.delete(item_path(COLLECTION, created["id"]))
            raise CliError(
                f"cannot write {key_file}: {exc.strerror or exc}; the key pair was deleted again"
            ) from None
    except BaseException:
        handle.close()
        key_file.unlink(missing_ok=True)  # ours alone
        raise
    return created


@app.command()
def create(
    name: Annotated[
        str, typer.Argument(callback=_check_name, help="1 to 63 letters, digits, '.', '_' or '-'.")
    ],
    project: Annotated[
        str, typer.Option("--project", "-p", metavar="NAME_OR_ID", help="The project that keeps it.")
    ],
    public_key_file: Annotated[
        Path | None,
        typer.Option(
            "--public-key-file",
            metavar="FILE.pub",
            exists=True,
            dir_okay=False,
            help="Import this public key. Without it, Sovra generates an Ed25519 pair.",
        ),
    ] = None,
    private_key_file: Annotated[
        Path | None,
        typer.Option(
            "--private-key-file",
            metavar="FILE",
            dir_okay=False,
            help="Where the generated private key goes (mode 0600, never overwritten); default: ./NAME.pem.",
        ),
    ] = None,
    label: LabelOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Import a public key, or generate a key pair and save its private key (shown only this once)."""
    if public_key_file is not None and private_key_file is not None:
        raise CliError(
            "--private-key-file is for generated pairs; an imported key's private half stays where it is",
            hint="pass only --public-key-file, or only --private-key-file",
        )
    body: dict[str, Any] = {"name": name, "labels": parse_labels(label)}
    key_file = private_key_file or Path(f"{name}.pem")
    with connect(url) as client:
        path = f"{project_path(resource_id_of(client, project))}/keypairs"
        if public_key_file is not None:
            keypair: Record = client.post(path, {**body, "public_key": read_public_key(public_key_file)})
        else:
            keypair = _generate(client, path, body, key_file)
    if output is OutputFormat.JSON:
        print_json(keypair if public_key_file else {**keypair, "private_key_file": str(key_file)})
    else:
        print_result(keypair_panel(keypair))
    if public_key_file is None:
        note(
            f"Private key written to {escape(str(key_file))} (mode 0600). Sovra did not keep it: "
            f"this file is the only copy. Log in with `ssh -i {escape(str(key_file))} USER@SERVER`."
        )


@app.command("list")
def list_keypairs(
    project: ProjectOption = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Key pairs of your projects."""
    with connect(url) as client:
        project_id = resource_id_of(client, project) if project else None
        items = client.list_all(COLLECTION, {"project_id": project_id}, limit)
    emit(output, items, keypair_table)


def _resolve(client: SovraClient, ref: str, project: str | None) -> Record:
    project_id = resource_id_of(client, project) if project else None
    return resolve(client, COLLECTION, ref, what="key pair", command="keypair", project_id=project_id)


@app.command()
def show(
    ref: KeyPairRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """One key pair, with its public key."""
    with connect(url) as client:
        keypair = _resolve(client, ref, project)
    emit(output, keypair, keypair_panel)


@app.command()
def delete(
    ref: KeyPairRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Delete a key pair. Servers created with it keep their copy of the key."""
    with connect(url) as client:
        keypair = _resolve(client, ref, project)
        client.delete(item_path(COLLECTION, keypair["id"]))
    if output is OutputFormat.JSON:
        print_json(keypair)
        return
    print_result(f"Deleted key pair {escape(keypair['name'])} ({keypair['id']}).")
    note("Servers created with it keep their copy of the key.")
