"""``sovra key``: cosign key pairs made here, and the public keys a project trusts for image signatures.

``sovra key create`` writes the same files as ``cosign generate-key-pair`` (``cosign.key``, an
encrypted private key with mode 0600, and ``cosign.pub``), so either tool can sign with them. The
passphrase comes from ``COSIGN_PASSWORD`` when it is set (even empty, as in cosign), else from a
hidden prompt; it is never printed, and neither is the private key. Only public keys are sent to the
API: ``sovra key trust`` refuses anything else before it connects.

The helpers ``load_signing_key`` and ``load_public_keys`` are what ``sovra image sign``, ``upload
--sign-key`` and ``verify --key`` use.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.text import Text

from sovra.cli.client import EXIT_API_ERROR, ApiError, CliError, Record, SovraClient, UrlOption, connect
from sovra.cli.output import (
    CommandGroup,
    OutputFormat,
    OutputOption,
    emit,
    note,
    print_json,
    print_result,
    signing_key_panel,
    signing_key_table,
)
from sovra.cli.projects import ProjectRef, project_path, resource_id_of
from sovra.domain.ids import is_id
from sovra.images import signing

app = typer.Typer(
    cls=CommandGroup,
    help="Signing keys: cosign key pairs, and the public keys a project trusts for image signatures.",
    no_args_is_help=True,
)

PASSPHRASE_ENV = "COSIGN_PASSWORD"
MAX_KEY_FILE_BYTES = 64 * 1024  # what the signing module reads at most
PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644
_PRIVATE_PEM_MARKERS = tuple(
    f"-----BEGIN {pem_type}-----".encode()
    for pem_type in (signing.PEM_TYPE_SIGSTORE_PRIVATE_KEY, signing.PEM_TYPE_COSIGN_PRIVATE_KEY)
)
_TRUST_HINT = "`sovra key trust PROJECT cosign.pub --name NAME` trusts a public key"


# -- passphrases and key files ---------------------------------------------------------------------------


def _ask(prompt: str) -> str:
    """One hidden answer; the prompt goes to stderr so stdout stays the command's result."""
    try:
        answer = typer.prompt(prompt, hide_input=True, default="", show_default=False, err=True)
    except typer.Abort:
        raise CliError(
            "no passphrase was given",
            hint=f"set {PASSPHRASE_ENV}, or type it at the prompt",
        ) from None
    return str(answer)


def read_passphrase(*, confirm: bool = False) -> bytes:
    """``COSIGN_PASSWORD`` when set (an empty value is an empty passphrase, as in cosign), else asked.

    With ``confirm`` (a new key) it is asked twice and must be the same both times.
    """
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        return from_env.encode()
    first = _ask("Enter password for private key")
    if confirm and _ask("Enter password for private key again") != first:
        raise CliError("the passphrases do not match; nothing was written")
    return first.encode()


def read_key_file(path: Path, what: str) -> bytes:
    """A key file's bytes, refusing one too large to be a key (it is never read whole)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise CliError(f"{path} is larger than {MAX_KEY_FILE_BYTES // 1024} KiB: it is not a {what}")
    return data


def load_signing_key(path: Path) -> signing.PrivateKey:
    """Decrypt a cosign private key; a wrong passphrase is a usage error (exit 2) that says so."""
    pem = read_key_file(path, "cosign private key")
    if not any(marker in pem for marker in _PRIVATE_PEM_MARKERS):
        raise CliError(
            f"{path} is not a cosign private key (a PEM block of type "
            f"{signing.PEM_TYPE_SIGSTORE_PRIVATE_KEY!r})",
            hint="`sovra key create` or `cosign generate-key-pair` makes one; "
            "`cosign import-key-pair` converts an OpenSSL key",
        )
    secret = read_passphrase()
    try:
        return signing.load_private_key(pem, secret)
    except signing.SigningKeyError as exc:
        if exc.code == "key_passphrase_invalid":
            raise CliError(
                f"wrong passphrase: it does not decrypt {path} (or the file was altered)",
                hint=f"the passphrase is read from {PASSPHRASE_ENV} when it is set, else asked for",
            ) from None
        raise CliError(f"cannot use {path}: {exc.message}") from None


def load_public_key_file(path: Path) -> signing.PublicKey:
    pem = read_key_file(path, "public key")
    try:
        return signing.load_public_key(pem)
    except signing.SigningKeyError as exc:
        hint = None
        if any(marker in pem for marker in _PRIVATE_PEM_MARKERS):
            hint = "that is a private key: give its public half (cosign.pub); private keys never leave here"
        raise CliError(f"cannot use {path}: {exc.message}", hint=hint) from None


def load_public_keys(paths: list[Path]) -> list[tuple[Path, signing.PublicKey]]:
    return [(path, load_public_key_file(path)) for path in paths]


# -- writing a key pair ----------------------------------------------------------------------------------


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never replacing a file) with ``mode`` from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it; never widen the private key beyond mode


def _write_replacing(path: Path, data: bytes, mode: int) -> None:
    """Write beside ``path`` with ``mode``, then rename over it: the old file is never truncated in
    place, so a key is not readable under the old file's (perhaps wider) permissions, not even briefly."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_exclusive(temporary, data, mode)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def write_key_pair(pair: signing.KeyPair, key_path: Path, pub_path: Path, *, force: bool) -> None:
    write = _write_replacing if force else _write_exclusive
    try:
        write(key_path, pair.private_pem, PRIVATE_KEY_MODE)
    except FileExistsError:
        raise CliError(f"{key_path} already exists; it was not overwritten", hint="pass --force") from None
    except OSError as exc:
        raise CliError(f"cannot write {key_path}: {exc.strerror or exc}") from None
    try:
        write(pub_path, pair.public_pem, PUBLIC_KEY_MODE)
    except OSError as exc:
        if not force:
            key_path.unlink(missing_ok=True)  # ours alone: no half a key pair left behind
        if isinstance(exc, FileExistsError):
            raise CliError(
                f"{pub_path} already exists; it was not overwritten", hint="pass --force"
            ) from None
        raise CliError(f"cannot write {pub_path}: {exc.strerror or exc}") from None


# -- commands --------------------------------------------------------------------------------------------


@app.command()
def create(
    output_prefix: Annotated[
        str,
        typer.Option(
            "--output-prefix", metavar="PREFIX", help="Write PREFIX.key and PREFIX.pub (as cosign does)."
        ),
    ] = "cosign",
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Make a cosign key pair: PREFIX.key (encrypted, mode 0600) and PREFIX.pub.

    The passphrase comes from COSIGN_PASSWORD when it is set, else it is asked for twice. The files
    are those of `cosign generate-key-pair`: cosign signs and verifies with them, and so does Sovra.
    """
    key_path, pub_path = Path(f"{output_prefix}.key"), Path(f"{output_prefix}.pub")
    if not force:
        existing = [str(p) for p in (key_path, pub_path) if p.exists() or p.is_symlink()]
        if existing:
            raise CliError(
                f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                "nothing was overwritten",
                hint="pass --force to replace the key pair, or choose another --output-prefix",
            )
    secret = read_passphrase(confirm=True)
    pair = signing.generate_key_pair(secret)
    write_key_pair(pair, key_path, pub_path, force=force)
    fingerprint = signing.key_fingerprint(signing.load_public_key(pair.public_pem))
    if not secret:
        note("[yellow]Warning:[/] the private key has no passphrase: whoever reads the file can sign.")
    result = {
        "private_key": str(key_path),
        "public_key": str(pub_path),
        "fingerprint": fingerprint,
        "public_key_pem": pair.public_pem.decode("ascii"),
    }
    if output is OutputFormat.JSON:
        print_json(result)
        return
    print_result(
        f"Private key written to {escape(str(key_path))} (mode 0600, keep it secret).\n"
        f"Public key written to {escape(str(pub_path))} (fingerprint {fingerprint})."
    )
    note(f"Trust it for a project's images with `sovra key trust PROJECT {pub_path} --name NAME`.")


@app.command()
def trust(
    project: ProjectRef,
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.pub",
            exists=True,
            dir_okay=False,
            readable=True,
            help="The public key (cosign.pub).",
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="What to call the key in the project.")],
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Trust a public key for the project's image signatures (project managers only)."""
    public_key = load_public_key_file(file)  # a private key is refused here and never sent
    pem = signing.public_key_pem(public_key).decode("ascii")
    with connect(url) as client:
        project_id = resource_id_of(client, project)
        key = client.post(f"{project_path(project_id)}/signing-keys", {"name": name, "public_key_pem": pem})
    emit(output, key, signing_key_panel)


@app.command("list")
def list_keys(project: ProjectRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """The public keys a project trusts for image signatures."""
    with connect(url) as client:
        items = _keys_of(client, resource_id_of(client, project))
    emit(output, items, signing_key_table)


def _keys_of(client: SovraClient, project_id: str) -> list[Record]:
    items: list[Record] = client.get(f"{project_path(project_id)}/signing-keys")["items"]
    return items


def _resolve_key(client: SovraClient, ref: str, project: str | None) -> tuple[str, Record | None]:
    """The key id ``ref`` names: an id as given, or a key name looked up in ``project``."""
    if is_id(ref.lower()) and project is None:
        return ref.lower(), None
    if project is None:
        raise CliError(
            f"{ref!r} is not a key id", hint="pass the id `sovra key list PROJECT` shows, or --project"
        )
    for key in _keys_of(client, resource_id_of(client, project)):
        if ref in (key["id"], key["name"]):
            return str(key["id"]), key
    raise CliError(
        f"Not found: project {project} trusts no key named {ref!r}",
        hint="`sovra key list PROJECT` shows its keys",
        exit_code=EXIT_API_ERROR,
    )


@app.command()
def distrust(
    key_ref: Annotated[
        str, typer.Argument(metavar="KEY_ID", help="The key's id (or its name, with --project).")
    ],
    project: Annotated[
        str | None,
        typer.Option("--project", "-p", metavar="NAME_OR_ID", help="Find the key by name in this project."),
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Stop trusting a key: signatures made with it no longer count.

    In a project that requires signatures, versions signed with no other trusted key are then no
    longer served.
    """
    with connect(url) as client:
        key_id, key = _resolve_key(client, key_ref, project)
        try:
            client.delete(f"/v1/signing-keys/{quote(key_id, safe='')}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            raise ApiError(exc.problem, hint="`sovra key list PROJECT` shows the trusted keys") from None
    if output is OutputFormat.JSON:
        print_json({"id": key_id, "name": key["name"] if key else None, "distrusted": True})
        return
    named = f" {key['name']}" if key else ""
    print_result(Text(f"No longer trusting key{named} ({key_id})."))
