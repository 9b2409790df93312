"""``sovra image``: image lines and their versions; uploads, URL imports, downloads and local builds.

Images are addressed by name or id; a name used in several projects needs ``--project``. Versions
are addressed by their version string (``20261120``) or id. Files are streamed from and to disk in
1 MiB chunks, never read whole, with a progress bar (size, speed, time left) when stderr is a
terminal and the output is a table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
import yaml
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from sovra.cli.client import (
    EXIT_API_ERROR,
    ApiError,
    CliError,
    Record,
    SovraClient,
    UrlOption,
    _hint_for,
    _problem_of,
    connect,
    resolve_token,
    resolve_url,
)
from sovra.cli.identity import ProjectOption
from sovra.cli.keys import load_public_keys, load_signing_key
from sovra.cli.operations import (
    DEFAULT_TIMEOUT,
    EXIT_INTERRUPTED,
    TimeoutOption,
    operation_path,
    wait_and_report,
)
from sovra.cli.output import (
    CommandGroup,
    OutputFormat,
    OutputOption,
    build_panel,
    emit,
    err_console,
    human_bytes,
    image_panel,
    image_table,
    image_version_panel,
    image_version_table,
    lifecycle_panel,
    note,
    print_json,
    print_result,
    signature_table,
    version_state_text,
)
from sovra.cli.projects import LabelOption, parse_labels, project_path, resource_id_of
from sovra.domain.errors import InvalidArgument
from sovra.domain.ids import is_id
from sovra.domain.image import DISK_FORMATS, ImageVersionSpec, ScsMetadata, validate_version
from sovra.images import signing
from sovra.images.build import BuildError, build_image

app = typer.Typer(
    cls=CommandGroup, help="Images: bootable disks, versioned and checked.", no_args_is_help=True
)
version_app = typer.Typer(cls=CommandGroup, help="One version of an image.", no_args_is_help=True)
app.add_typer(version_app, name="version")

CHUNK = 1024 * 1024
UPLOAD_TIMEOUT = httpx.Timeout(30.0, read=600.0)  # the answer comes once every byte has been checked
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_RANGE_RE = re.compile(r"^(?:bytes=)?(?:(\d+)-(\d*)|-(\d+))$")
_TEXT_FIELDS = frozenset(
    name for name, field in ScsMetadata.model_fields.items() if field.annotation in (str, str | None)
)
"""scs-0102 properties that are text even when YAML reads them as numbers (``os_version: 12``)."""


# -- option checks: a bad value is a usage error (exit 2) before anything is sent -------------------


def _check_format(value: str | None) -> str | None:
    if value is not None and value not in DISK_FORMATS:
        raise typer.BadParameter(f"{value!r} is not a disk format: {', '.join(DISK_FORMATS)}")
    return value


def _check_sha256(value: str | None) -> str | None:
    if value is not None and not _SHA256_RE.match(value):
        raise typer.BadParameter(f"{value!r} is not a SHA-256 (64 hexadecimal characters)")
    return value.lower() if value else value


def _check_meta(values: list[str] | None) -> list[str]:
    for value in values or []:
        key, sep, _ = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{value!r} is not KEY=VALUE (for example os_version=12)")
    return values or []


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise typer.BadParameter(f"{value!r} is not a regular expression: {exc}") from None
    return value


def _check_range(value: str | None) -> str | None:
    """``START-END``, ``START-`` or ``-LAST`` (an optional ``bytes=`` is dropped)."""
    if value is None:
        return None
    match = _RANGE_RE.match(value.strip())
    if not match or (match[1] and match[2] and int(match[1]) > int(match[2])):
        raise typer.BadParameter(f"{value!r} is not a byte range: START-END, START- or -LAST, e.g. 0-1023")
    return value.strip().removeprefix("bytes=")


ImageRef = Annotated[str, typer.Argument(metavar="IMAGE", help="The image's name or id.")]
VersionRef = Annotated[str, typer.Argument(metavar="VERSION", help="The version (e.g. 20261120) or its id.")]
NewVersion = Annotated[
    str,
    typer.Argument(metavar="VERSION", help="The new version: 1 to 23 letters, digits, '.', '_', '+', '-'."),
]
SelectorOption = Annotated[
    str | None, typer.Option("--selector", "-s", help="Label selector, e.g. 'os=debian,tier in (base)'.")
]
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        callback=_check_format,
        help=f"The file's format, refused if the bytes are another: {', '.join(DISK_FORMATS)} "
        "[default: detected].",
    ),
]
Sha256Option = Annotated[
    str | None,
    typer.Option(
        "--sha256", metavar="HEX", callback=_check_sha256, help="Refuse bytes that hash differently."
    ),
]
MetadataFileOption = Annotated[
    Path | None,
    typer.Option(
        "--metadata",
        metavar="FILE",
        exists=True,
        dir_okay=False,
        readable=True,
        help="scs-0102 metadata (architecture, min_disk, os_distro, ...) as YAML or JSON.",
    ),
]
MetaOption = Annotated[
    list[str] | None,
    typer.Option(
        "--meta", metavar="KEY=VALUE", callback=_check_meta, help="One metadata property; repeatable, wins."
    ),
]
NoBootTestOption = Annotated[
    bool, typer.Option("--no-boot-test", help="Promote the version without booting it first.")
]
BootMarkerOption = Annotated[
    str | None,
    typer.Option(
        "--boot-marker",
        metavar="REGEX",
        callback=_check_regex,
        help="What the serial console must print [default: a login prompt or cloud-init's end].",
    ),
]
WaitOption = Annotated[
    bool,
    typer.Option("--wait", help="Wait until the version is active: exit 0, 1 if it failed, 3 on timeout."),
]
SignKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--sign-key",
        metavar="FILE",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Sign FILE's SHA-256 with this cosign private key and send the signature with the version "
        "(passphrase from COSIGN_PASSWORD, else asked).",
    ),
]
SigOutOption = Annotated[
    Path | None,
    typer.Option(
        "--sig-out", metavar="FILE", dir_okay=False, help="Write the detached signature (cosign .sig)."
    ),
]


# -- paths and lookups ---------------------------------------------------------------------------------


def image_path(image_id: str) -> str:
    return f"/v1/images/{quote(image_id, safe='')}"


def version_path(version: Record) -> str:
    return f"{image_path(version['image_id'])}/versions/{quote(version['id'], safe='')}"


def _shell(word: str) -> str:
    return shlex.quote(word)


def resolve_image(client: SovraClient, ref: str, project: str | None = None) -> Record:
    """The image ``ref`` names: by id when it is one, else by name (in ``project`` when given).

    A name found in several projects (one's own and public images) is refused as ambiguous.
    """
    not_found: ApiError | None = None
    if is_id(ref.lower()):
        try:
            image: Record = client.get(image_path(ref.lower()))
            return image
        except ApiError as exc:
            if exc.status != 404:
                raise
            not_found = exc
    project_id = resource_id_of(client, project) if project else None
    found = client.list_all("/v1/images", {"name": ref, "project_id": project_id})
    if len(found) == 1:
        return found[0]
    if found:
        where = ", ".join(f"{i.get('project_id')} (image {i['id']})" for i in found)
        raise CliError(
            f"{len(found)} images are named {ref!r}, in projects {where}",
            hint="pass --project NAME_OR_ID, or the image's id",
        )
    if not_found is not None:
        raise not_found
    raise CliError(
        f"Not found: no image is named {ref!r}" + (f" in project {project}" if project else ""),
        hint="`sovra image list` shows the images",
        exit_code=EXIT_API_ERROR,
    )


def version_of(client: SovraClient, image_ref: str, version_ref: str, project: str | None) -> Record:
    """The version ``version_ref`` of the image ``image_ref`` names."""
    return resolve_version(client, resolve_image(client, image_ref, project), version_ref)


def resolve_version(client: SovraClient, image: Record, ref: str) -> Record:
    """The version of ``image`` that ``ref`` names: its id, its version string or ``image:version``."""
    versions = f"{image_path(image['id'])}/versions"
    if is_id(ref.lower()):
        try:
            version: Record = client.get(f"{versions}/{ref.lower()}")
            return version
        except ApiError as exc:
            if exc.status != 404:
                raise
    for candidate in client.list_all(versions):
        if ref in (candidate["spec"]["version"], candidate["name"]):
            return candidate
    raise CliError(
        f"Not found: image {image['name']} has no version {ref!r}",
        hint=f"`sovra image versions {_shell(image['name'])}` lists them",
        exit_code=EXIT_API_ERROR,
    )


# -- streaming -------------------------------------------------------------------------------------------


class TransferClient(SovraClient):
    """``SovraClient`` plus request and response bodies streamed in pieces."""

    def __enter__(self) -> TransferClient:
        return self

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        content: Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> Iterator[httpx.Response]:
        """The response with its body unread; ``ApiError`` on 4xx/5xx.

        Transport failures come through as ``httpx.TransportError``: what an interrupted transfer
        means is for the caller to find out.
        """
        request = self._http.build_request(
            method, path, content=content, headers=headers, timeout=timeout or self._http.timeout
        )
        response = self._http.send(request, stream=True)
        try:
            if response.is_error:
                response.read()
                raise ApiError(_problem_of(response), hint=_hint_for(response.status_code))
            yield response
        finally:
            response.close()


def _connect(url: str | None) -> TransferClient:
    return TransferClient(resolve_url(url), resolve_token())


Advance = Callable[[int], None]


def _display(output: OutputFormat) -> Console | None:
    """Where progress goes: stderr, when it is a terminal and the output is a table (as for
    `sovra op wait`; Rich's TTY_COMPATIBLE=1 or FORCE_COLOR make any stderr count as one)."""
    return err_console if output is OutputFormat.TABLE and err_console.is_terminal else None


@contextmanager
def transfer_bar(display: Console | None, description: str, total: int | None) -> Iterator[Advance]:
    """A bytes progress bar (done/total, speed, time left) fed by the callback this yields.

    It stays on screen when done, with the final size and speed; nothing at all without a display.
    """
    if display is None:
        yield lambda _: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=display) as progress:
        task = progress.add_task(escape(description), total=total)
        yield lambda size: progress.advance(task, size)


def _sha256_of(path: Path, display: Console | None) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle, transfer_bar(display, f"Hashing {path.name}", _size(path)) as advance:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                advance(len(chunk))
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _size(path: Path) -> int:
    return path.stat().st_size


# -- version bodies --------------------------------------------------------------------------------------


def _plain(key: str, value: Any) -> Any:
    """A metadata value as the API takes it: dates as text, numbers as text for text properties."""
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if key in _TEXT_FIELDS and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def load_metadata(path: Path | None, pairs: list[str] | None) -> Record:
    """``--metadata FILE`` (YAML or JSON) overlaid with ``--meta KEY=VALUE`` (already checked)."""
    loaded: Any = {}
    if path is not None:
        try:
            text = path.read_text()
            loaded = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            raise typer.BadParameter(f"cannot read {str(path)!r}: {exc}", param_hint="'--metadata'") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise typer.BadParameter(
                f"{str(path)!r} holds a {type(loaded).__name__}, not a mapping of properties",
                param_hint="'--metadata'",
            )
    metadata = {str(key): _plain(str(key), value) for key, value in loaded.items()}
    return metadata | parse_labels(pairs)


def declared(source_type: str, disk_format: str | None, sha256: str | None, **more: str) -> Record:
    source: Record = {"type": source_type, **more}
    if disk_format is not None:
        source["declared_format"] = disk_format
    if sha256 is not None:
        source["declared_sha256"] = sha256
    return source


def version_body(
    version: str, source: Record, metadata: Record, boot_test: bool = True, marker: str | None = None
) -> Record:
    boot: Record = {"enabled": boot_test}
    if marker is not None:
        boot["marker"] = marker
    return {"version": version, "source": source, "metadata": metadata, "boot_test": boot}


def _check_before_hashing(body: Record) -> None:
    """Refuse here what the API would refuse, before a long hash of the file is wasted on it."""
    try:
        validate_version(body["version"])
        ImageVersionSpec.model_validate(body)
    except InvalidArgument as exc:
        raise CliError(exc.detail) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(f"the API would refuse this version: {problems}", hint=_METADATA_HINT) from None


_METADATA_HINT = "scs-0102 metadata comes from --metadata FILE (YAML or JSON) and --meta KEY=VALUE"


def _create_version(client: SovraClient, image: Record, body: Record) -> Record:
    try:
        version: Record = client.post(f"{image_path(image['id'])}/versions", body)
    except ApiError as exc:
        if exc.status == 422 and any(field.startswith("metadata") for field, _ in exc.field_errors):
            raise ApiError(exc.problem, hint=_METADATA_HINT) from None
        if exc.status == 409:
            hint = f"`sovra image versions {_shell(image['name'])}` lists the versions it has"
            raise ApiError(exc.problem, hint=hint) from None
        raise
    note(f"Created version {version['name']} ({version['id']}).")
    return version


# -- upload ----------------------------------------------------------------------------------------------


def _retry_hint(version: Record) -> str:
    image, number = version["name"].rsplit(":", 1)
    return (
        f"version {number} is failed now; `sovra image version delete {_shell(image)} {_shell(number)}` "
        "frees it for another upload"
    )


def _send_file(client: TransferClient, version: Record, path: Path, display: Console | None) -> Record:
    """PUT ``path`` in chunks read as they are sent; the operation the API answers with."""
    size = _size(path)
    with path.open("rb") as handle, transfer_bar(display, f"Uploading {path.name}", size) as advance:

        def chunks() -> Iterator[bytes]:
            while chunk := handle.read(CHUNK):
                yield chunk
                advance(len(chunk))  # the previous chunk is sent once the next one is asked for

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with client.stream(
            "PUT", f"{version_path(version)}/file", content=chunks(), headers=headers, timeout=UPLOAD_TIMEOUT
        ) as response:
            operation: Record = json.loads(response.read())
    return operation


def upload_file(client: TransferClient, version: Record, path: Path, display: Console | None) -> Record:
    """Stream ``path`` into ``version``; refusals and interruptions become ``CliError``s that say why."""
    try:
        return _send_file(client, version, path, display)
    except ApiError as exc:
        if exc.status == 422:  # the bytes were refused: code and check are in the problem
            problem = {key: value for key, value in exc.problem.items() if value is not None}
            raise ApiError(problem, hint=_retry_hint(version)) from None
        raise
    except httpx.TransportError as exc:
        raise _interrupted(client, version, exc) from None
    except KeyboardInterrupt:
        raise CliError(
            f"upload stopped; version {version['name']} keeps no bytes",
            hint=_retry_hint(version),
            exit_code=EXIT_INTERRUPTED,
        ) from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", hint=_retry_hint(version)) from None


def _interrupted(client: SovraClient, version: Record, exc: httpx.TransportError) -> CliError:
    """The connection broke mid-upload. The API closes it when it refuses the bytes before the end
    (an unsafe header is seen in the first MiB), so its verdict is read from the version."""
    try:
        current: Record = client.get(version_path(version))
    except CliError:
        current = version
    reason = (current.get("facts") or {}).get("failure_reason")
    if current.get("state") == "failed" and reason:
        return CliError(
            f"the API refused the image: {reason}", hint=_retry_hint(version), exit_code=EXIT_API_ERROR
        )
    return CliError(
        f"the upload into {version['name']} was interrupted: {exc or type(exc).__name__}",
        hint=_retry_hint(version),
        exit_code=EXIT_API_ERROR,
    )


def _report(
    client: SovraClient,
    version: Record,
    operation: Record,
    what: str,
    *,
    wait: bool,
    timeout: float,
    output: OutputFormat,
    display: Console | None,
) -> None:
    """The operation that prepares ``version``: printed, or waited for (then the version's state)."""
    if wait:
        note(f"{what}; waiting for operation {operation['id']} ({operation['verb']}).")
        wait_and_report(client, operation, timeout, output, display)
        if output is OutputFormat.TABLE:
            state = client.get(version_path(version))["state"]
            print_result(Text.assemble(f"Version {version['name']} is ", version_state_text(state), "."))
        return
    if output is OutputFormat.JSON:
        print_json(operation)
        return
    print_result(
        f"{escape(what)}: operation {operation['id']} ({operation['verb']}) is {operation['state']}."
    )
    note(f"Follow it with `sovra op wait {operation['id']}`.")


def _upload_new_version(
    client: TransferClient,
    image: Record,
    body: Record,
    path: Path,
    *,
    wait: bool,
    timeout: float,
    output: OutputFormat,
    display: Console | None,
) -> None:
    version = _create_version(client, image, body)
    operation = upload_file(client, version, path, display)
    what = f"Uploaded {path.name} ({human_bytes(_size(path))}) into {version['name']}"
    _report(client, version, operation, what, wait=wait, timeout=timeout, output=output, display=display)


# -- commands: images ------------------------------------------------------------------------------------


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="1 to 40 letters, digits, spaces, '.', '_', '+' or '-'.")],
    project: Annotated[
        str, typer.Option("--project", "-p", metavar="NAME_OR_ID", help="The project that owns it.")
    ],
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    public: Annotated[
        bool, typer.Option("--public", help="Every project may see and boot it (admins only).")
    ] = False,
    label: LabelOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Create an image: a named line of versions, e.g. 'Debian 12'."""
    spec: Record = {"visibility": "public" if public else "private"}
    if description is not None:
        spec["description"] = description
    with connect(url) as client:
        project_id = resource_id_of(client, project)
        body = {"name": name, "labels": parse_labels(label), "spec": spec}
        image = client.post(f"{project_path(project_id)}/images", body)
    emit(output, image, image_panel)


@app.command("list")
def list_images(
    project: ProjectOption = None,
    selector: SelectorOption = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Images of your projects, and public ones."""
    with connect(url) as client:
        project_id = resource_id_of(client, project) if project else None
        images = client.list_all("/v1/images", {"project_id": project_id, "label_selector": selector}, limit)
    emit(output, images, image_table)


@app.command()
def show(
    image_ref: ImageRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """One image (with its versions, in a table)."""
    with connect(url) as client:
        image = resolve_image(client, image_ref, project)
        if output is OutputFormat.JSON:
            print_json(image)
            return
        versions = client.list_all(f"{image_path(image['id'])}/versions")
    print_result(image_panel(image, versions))


@app.command()
def delete(
    image_ref: ImageRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Delete an image that has no versions left (`sovra image version delete` removes them)."""
    with connect(url) as client:
        image = resolve_image(client, image_ref, project)
        try:
            client.request("DELETE", image_path(image["id"]))
        except ApiError as exc:
            if exc.status != 409:
                raise
            hint = f"delete its versions first: `sovra image versions {_shell(image['name'])}` lists them"
            raise ApiError(exc.problem, hint=hint) from None
    if output is OutputFormat.JSON:
        print_json(image)
        return
    print_result(f"Deleted image {escape(image['name'])} ({image['id']}).")


@app.command()
def versions(
    image_ref: ImageRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """An image's versions: state, format, size and SHA-256 (its first 12 digits)."""
    with connect(url) as client:
        image = resolve_image(client, image_ref, project)
        items = client.list_all(f"{image_path(image['id'])}/versions")
    emit(output, items, image_version_table)


@version_app.command("show")
def show_version(
    image_ref: ImageRef,
    version_ref: VersionRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """One version: its state, what was measured about its bytes, and its metadata."""
    with connect(url) as client:
        version = version_of(client, image_ref, version_ref, project)
    emit(output, version, image_version_panel)


@version_app.command("delete")
def delete_version(
    image_ref: ImageRef,
    version_ref: VersionRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Delete a version (refused while an operation runs on it or a server uses it)."""
    with connect(url) as client:
        version = version_of(client, image_ref, version_ref, project)
        client.request("DELETE", version_path(version))
    if output is OutputFormat.JSON:
        print_json(version)
        return
    print_result(f"Deleted version {escape(version['name'])} ({version['id']}).")


# -- commands: bytes in and out --------------------------------------------------------------------------


@app.command()
def upload(
    image_ref: ImageRef,
    version: NewVersion,
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", exists=True, dir_okay=False, readable=True, help="The disk image."),
    ],
    disk_format: FormatOption = None,
    sha256: Sha256Option = None,
    verify_sha256: Annotated[
        bool,
        typer.Option(
            "--verify-sha256", help="Hash FILE here first, so the API refuses bytes that arrive changed."
        ),
    ] = False,
    metadata: MetadataFileOption = None,
    meta: MetaOption = None,
    no_boot_test: NoBootTestOption = False,
    boot_marker: BootMarkerOption = None,
    sign_key: SignKeyOption = None,
    project: ProjectOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Create VERSION of IMAGE and upload FILE into it, streamed from disk.

    The API hashes and inspects the bytes as they arrive and refuses unsafe or mislabelled images
    (exit 1, naming the check that failed). An operation then converts, boot-tests and promotes
    the version; --wait waits for it. With --sign-key, FILE is hashed and signed here first (as
    `cosign sign-blob` would), which a project that requires signatures needs.
    """
    if sha256 is not None and verify_sha256:
        raise typer.BadParameter(
            "give --sha256 HEX or --verify-sha256, not both", param_hint="'--verify-sha256'"
        )
    values = load_metadata(metadata, meta)
    display = _display(output)
    body = version_body(
        version, declared("upload", disk_format, sha256), values, not no_boot_test, boot_marker
    )
    private_key = None
    if sign_key is not None:
        _check_before_hashing(body)
        private_key = load_signing_key(sign_key)  # a wrong passphrase fails before anything is sent
    with _connect(url) as client:
        image = resolve_image(client, image_ref, project)
        if verify_sha256 or private_key is not None:
            _check_before_hashing(body)
            digest = _sha256_of(file, display)
            if sha256 is not None and sha256 != digest:
                raise CliError(
                    f"{file} hashes to sha256 {digest}, not {sha256} as --sha256 says; nothing was sent"
                )
            body["source"]["declared_sha256"] = digest
            if private_key is not None:
                body["signatures"] = [signing.signature_b64(signing.sign_digest(private_key, digest))]
                note(f"Signed sha256 {digest} with key {_fingerprint(private_key)}.")
        _upload_new_version(
            client, image, body, file, wait=wait, timeout=timeout, output=output, display=display
        )


@app.command("import")
def import_version(
    image_ref: ImageRef,
    version: NewVersion,
    source_url: Annotated[str, typer.Argument(metavar="URL", help="Where the API downloads the image from.")],
    disk_format: FormatOption = None,
    sha256: Sha256Option = None,
    metadata: MetadataFileOption = None,
    meta: MetaOption = None,
    no_boot_test: NoBootTestOption = False,
    boot_marker: BootMarkerOption = None,
    project: ProjectOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Create VERSION of IMAGE from a URL: the API downloads it with the same checks as an upload,
    then converts, boot-tests and promotes it (an operation; --wait waits for it)."""
    values = load_metadata(metadata, meta)
    source = declared("url", disk_format, sha256, url=source_url)
    display = _display(output)
    with connect(url) as client:
        image = resolve_image(client, image_ref, project)
        created = _create_version(
            client, image, version_body(version, source, values, not no_boot_test, boot_marker)
        )
        operation = client.get(operation_path(created["operation_id"]))
        what = f"Importing {source_url} into {created['name']}"
        _report(client, created, operation, what, wait=wait, timeout=timeout, output=output, display=display)


@dataclasses.dataclass(frozen=True)
class Received:
    size: int
    sha256: str
    served: str | None
    """The SHA-256 the API says the whole file has (its ETag, else the version's facts)."""
    content_range: str | None


def served_digest(response: httpx.Response, version: Record) -> str | None:
    """The digest of what the API serves: its ETag (a quoted SHA-256), else ``Digest: sha-256=…``,
    else the version's disk blob (or uploaded blob, before conversion)."""
    etag = response.headers.get("etag", "").removeprefix("W/").strip('"')
    if _SHA256_RE.match(etag):
        return str(etag.lower())
    for part in response.headers.get("digest", "").split(","):
        algorithm, _, value = part.strip().partition("=")
        if algorithm.lower() == "sha-256" and _SHA256_RE.match(value):
            return str(value.lower())
    facts = version.get("facts") or {}
    blob: str | None = facts.get("disk_blob") or facts.get("source_blob")
    return blob


def _receive(
    client: TransferClient, version: Record, part: Path, byte_range: str | None, display: Console | None
) -> Received:
    digest, size = hashlib.sha256(), 0
    headers = {"Range": f"bytes={byte_range}"} if byte_range else {}
    with client.stream("GET", f"{version_path(version)}/file", headers=headers) as response:
        length = int(response.headers.get("content-length") or 0) or None
        with (
            part.open("wb") as out,
            transfer_bar(display, f"Downloading {version['name']}", length) as advance,
        ):
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                advance(len(chunk))
        if length is not None and size != length:
            raise CliError(f"the download ended after {size} of {length} bytes", exit_code=EXIT_API_ERROR)
        partial = response.status_code == httpx.codes.PARTIAL_CONTENT
        content_range = response.headers.get("content-range") if partial else None
        return Received(size, digest.hexdigest(), served_digest(response, version), content_range)


@app.command()
def download(
    image_ref: ImageRef,
    version_ref: VersionRef,
    file: Annotated[Path, typer.Argument(metavar="FILE", dir_okay=False, help="Where to write it.")],
    byte_range: Annotated[
        str | None,
        typer.Option(
            "--range",
            metavar="START-END",
            callback=_check_range,
            help="Only these bytes: START-END, START- or -LAST (a range is not checked against the digest).",
        ),
    ] = None,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Download a version's disk (what hosts receive), streamed to FILE.part and renamed to FILE
    once its SHA-256 matches the version's; a mismatch removes it (exit 1)."""
    part = file.with_name(file.name + ".part")
    display = _display(output)
    with _connect(url) as client:
        version = version_of(client, image_ref, version_ref, project)
        try:
            received = _receive(client, version, part, byte_range, display)
            verified = _verify(received, part)
            part.replace(file)
        except httpx.TransportError as exc:
            raise CliError(
                f"the download of {version['name']} was interrupted: {exc}", exit_code=EXIT_API_ERROR
            ) from None
        except OSError as exc:
            raise CliError(f"cannot write {file}: {exc.strerror or exc}") from None
        finally:
            part.unlink(missing_ok=True)  # gone already when complete and renamed
    result = {
        "image_id": version["image_id"],
        "version_id": version["id"],
        "version": version["name"],
        "path": str(file),
        "size": received.size,
        "sha256": received.sha256,
        "verified": verified,
        "content_range": received.content_range,
    }
    if output is OutputFormat.JSON:
        print_json(result)
        return
    check = "sha256 verified" if verified else f"{received.content_range or 'sha256'}, not verified"
    print_result(f"Downloaded {human_bytes(received.size)} to {escape(str(file))} ({escape(check)}).")


def _verify(received: Received, part: Path) -> bool:
    """True if the whole file matched the served digest; raises on a mismatch. Ranges go unchecked."""
    if received.content_range is not None:
        note(f"Got {received.content_range}: a part cannot be checked against the image's sha256.")
        return False
    if received.served is None:
        note("The API named no sha256 for these bytes: not verified.")
        return False
    if received.sha256 != received.served:
        raise CliError(
            f"the downloaded bytes hash to sha256 {received.sha256}, not {received.served} as the API says; "
            f"{part} was removed",
            hint="download again; if it keeps failing, the stored image may be damaged",
            exit_code=EXIT_API_ERROR,
        )
    return True


# -- build -----------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$SOVRA_CACHE``, else ``$XDG_CACHE_HOME/sovra``, else ``~/.cache/sovra``."""
    explicit = os.environ.get("SOVRA_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sovra"


def run_build(file: Path, display: Console | None) -> Record:
    """Build the tiny guest into ``file``; the kernel package stays in the cache between builds."""
    root = cache_dir()
    status: AbstractContextManager[Any] = nullcontext()
    if display is not None:
        status = display.status(f"Building {escape(str(file))} (cache {escape(str(root))})")
    try:
        with status:
            result = build_image(file.absolute(), work_dir=root / "work", cache_dir=root / "kernel")
    except BuildError as exc:
        raise CliError(f"the build failed: {exc}", exit_code=EXIT_API_ERROR) from None
    except OSError as exc:
        raise CliError(f"the build failed: {exc}", hint=f"is {root} (SOVRA_CACHE) writable?") from None
    return {**dataclasses.asdict(result), "path": str(result.path)}


def _image_to_upload_to(client: SovraClient, ref: str, project: str | None, create: bool) -> Record:
    try:
        return resolve_image(client, ref, project)
    except (ApiError, CliError):
        if not create:
            raise
    if project is None:
        raise CliError("--create needs --project: the project the new image belongs to")
    image: Record = client.post(f"{project_path(resource_id_of(client, project))}/images", {"name": ref})
    return image


@app.command()
def build(
    file: Annotated[
        Path, typer.Option("--file", metavar="FILE", dir_okay=False, help="Where to write the qcow2.")
    ] = Path("sovra-tiny.qcow2"),
    upload_to: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--upload",
            metavar="IMAGE VERSION",
            help="Then upload it as this new version of this image, with the builder's metadata.",
        ),
    ] = None,
    no_boot_test: NoBootTestOption = False,
    create_image: Annotated[
        bool, typer.Option("--create", help="Create the image (in --project) if it does not exist yet.")
    ] = False,
    project: ProjectOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Build the Sovra tiny guest here: a small qcow2 that boots to a login prompt in seconds.

    The Debian cloud kernel is downloaded once into $SOVRA_CACHE (default ~/.cache/sovra). With
    --upload, --output json prints the upload's operation, as `sovra image upload` does.
    """
    display = _display(output)
    if upload_to is None:
        emit(output, run_build(file, display), build_panel)
        return
    image_ref, version = upload_to
    with _connect(url) as client:
        image = _image_to_upload_to(client, image_ref, project, create_image)  # a typo fails at once
        result = run_build(file, display)
        if output is OutputFormat.TABLE:
            print_result(build_panel(result))
        else:
            note(f"Built {result['path']} (sha256 {result['sha256']}).")
        source = declared("upload", result["format"], result["sha256"])
        body = version_body(version, source, result["metadata"], not no_boot_test)
        _upload_new_version(
            client, image, body, file, wait=wait, timeout=timeout, output=output, display=display
        )


# -- signatures ------------------------------------------------------------------------------------------

MAX_SIGNATURES = 8  # what a version holds (ImageVersionSpec.signatures)


def _fingerprint(key: signing.PrivateKey | signing.PublicKey) -> str:
    public = key.public_key() if isinstance(key, signing.PrivateKey) else key
    return signing.key_fingerprint(public)


def _export(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def _signed_sha256(version: Record) -> str:
    """The SHA-256 a signature covers: that of the uploaded bytes, once they are in."""
    sha256: str | None = (version.get("facts") or {}).get("sha256")
    if not sha256:
        raise CliError(
            f"version {version['name']} has no bytes yet ({version['state']}): there is nothing to sign",
            hint="sign once its upload is in, or sign while uploading with `sovra image upload --sign-key`",
            exit_code=EXIT_API_ERROR,
        )
    return sha256


@app.command()
def sign(
    image_ref: ImageRef,
    version_ref: VersionRef,
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            readable=True,
            help="The cosign private key (passphrase from COSIGN_PASSWORD, else asked).",
        ),
    ],
    sig_out: SigOutOption = None,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Sign a version's bytes here with a cosign key and attach the signature.

    The signature is `cosign sign-blob --key` over the uploaded file; the API keeps it only if one
    of the project's trusted keys (`sovra key list`) verifies it.
    """
    with connect(url) as client:
        version = version_of(client, image_ref, version_ref, project)
        sha256 = _signed_sha256(version)
        if len(version["spec"].get("signatures") or []) >= MAX_SIGNATURES:
            raise CliError(
                f"version {version['name']} already carries {MAX_SIGNATURES} signatures, the most it holds",
                exit_code=EXIT_API_ERROR,
            )
        private_key = load_signing_key(key)
        signature = signing.signature_b64(signing.sign_digest(private_key, sha256))
        try:
            client.post(f"{version_path(version)}/signatures", {"signature": signature})
        except ApiError as exc:
            if exc.status != 400:
                raise
            project_ref = version.get("project_id") or "PROJECT"
            hint = (
                f"the API keeps signatures made with a key the project trusts: "
                f"`sovra key trust {project_ref} {_shell(str(key.with_suffix('.pub')))} --name NAME` "
                f"trusts yours; `sovra key list {project_ref}` shows the trusted ones"
            )
            raise ApiError(exc.problem, hint=hint) from None
    if sig_out is not None:
        _export(sig_out, signature)
    result = {
        "image_id": version["image_id"],
        "version_id": version["id"],
        "version": version["name"],
        "sha256": sha256,
        "key_fingerprint": _fingerprint(private_key),
        "signature": signature,
        "sig_path": str(sig_out) if sig_out is not None else None,
    }
    if output is OutputFormat.JSON:
        print_json(result)
        return
    print_result(f"Signed {escape(version['name'])} (sha256 {sha256}) with key {result['key_fingerprint']}.")
    if sig_out is not None:
        note(f"Signature written to {escape(str(sig_out))}.")


def _check_locally(
    keys: list[tuple[Path, signing.PublicKey]], sha256: str, items: list[Record]
) -> tuple[list[Record], Record | None]:
    """Each signature against the given keys only (what the API trusts does not matter here); the
    bundle of the first that verifies."""
    by_fingerprint = {_fingerprint(key): (path, key) for path, key in keys}
    checks: list[Record] = []
    bundle: Record | None = None
    for index, item in enumerate(items, 1):
        check: Record = {"index": index, "signature": item["signature"], "valid": False, "key": None}
        try:
            fingerprint = signing.verify_with_any([key for _, key in keys], sha256, item["signature"])
        except signing.SigningError as exc:
            check["detail"] = (
                "does not verify with the given key(s)"
                if exc.code in ("signature_untrusted", "signature_mismatch")
                else exc.message
            )
        else:
            path, key = by_fingerprint[fingerprint]
            check |= {"valid": True, "key": fingerprint, "detail": f"verified with {path}"}
            if bundle is None:
                bundle = signing.make_bundle(sha256, signing.signature_from_b64(item["signature"]), key)
        checks.append(check)
    return checks, bundle


def _server_verdicts(items: list[Record]) -> tuple[list[Record], Record | None]:
    """Each signature as the API judged it against the project's trusted keys."""
    checks: list[Record] = []
    bundle: Record | None = None
    for index, item in enumerate(items, 1):
        valid = item.get("trusted_key") is not None
        detail = (
            "verified by the API with a key the project trusts" if valid else "no trusted key verifies it"
        )
        checks.append(
            {
                "index": index,
                "signature": item["signature"],
                "valid": valid,
                "key": item.get("trusted_key"),
                "detail": detail,
            }
        )
        if valid and bundle is None:
            bundle = item.get("bundle")
    return checks, bundle


@app.command()
def verify(
    image_ref: ImageRef,
    version_ref: VersionRef,
    key: Annotated[
        list[Path] | None,
        typer.Option(
            "--key",
            metavar="FILE.pub",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Verify here against this public key (repeatable), whatever the project trusts "
            "[default: report the API's verdicts].",
        ),
    ] = None,
    bundle_out: Annotated[
        Path | None,
        typer.Option(
            "--bundle-out",
            metavar="FILE",
            dir_okay=False,
            help="Write a Sigstore bundle of the first valid signature (FILE.sigstore.json).",
        ),
    ] = None,
    sig_out: SigOutOption = None,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Check a version's signatures: exit 0 when at least one is valid, 1 when none is.

    With --key, each signature is verified here against the given public keys; without, the API's
    verdict (against the project's trusted keys) is reported. The bundle and .sig exports are what
    `cosign verify-blob --key cosign.pub --bundle FILE --insecure-ignore-tlog` accepts.
    """
    keys = load_public_keys(key or [])  # unreadable keys fail before anything is asked of the API
    with connect(url) as client:
        version = version_of(client, image_ref, version_ref, project)
        listed = client.get(f"{version_path(version)}/signatures")
    sha256: str | None = listed.get("sha256")
    items: list[Record] = listed.get("items") or []
    if keys and sha256:
        checks, bundle = _check_locally(keys, sha256, items)
    elif keys:  # no bytes, nothing a signature could cover
        checks = [
            {"index": i, "signature": s["signature"], "valid": False, "key": None, "detail": "no bytes yet"}
            for i, s in enumerate(items, 1)
        ]
        bundle = None
    else:
        checks, bundle = _server_verdicts(items)
    first = next((c for c in checks if c["valid"]), None)
    if first is not None:
        if bundle_out is not None and bundle is not None:
            _export(bundle_out, json.dumps(bundle))
        if sig_out is not None:
            _export(sig_out, first["signature"])
    result = {
        "image_id": version["image_id"],
        "version_id": version["id"],
        "version": version["name"],
        "sha256": sha256,
        "checked_by": "local keys" if keys else "api",
        "keys": [_fingerprint(k) for _, k in keys],
        "valid": first is not None,
        "signatures": checks,
        "bundle_path": str(bundle_out) if first is not None and bundle_out and bundle else None,
        "sig_path": str(sig_out) if first is not None and sig_out else None,
    }
    if output is OutputFormat.JSON:
        print_json(result)
    else:
        print_result(_verify_summary(result))
        for what, path in (("Bundle", result["bundle_path"]), ("Signature", result["sig_path"])):
            if path:
                note(f"{what} written to {escape(path)}.")
    if first is None:
        why = "it carries no signature" if not items else "none of its signatures is valid"
        if not sha256:
            why = "it has no bytes yet"
        raise CliError(f"version {version['name']} is not verified: {why}", exit_code=EXIT_API_ERROR)


def _verify_summary(result: Record) -> RenderableType:
    parts: list[RenderableType] = [signature_table(result["signatures"])]
    if result["valid"]:
        valid = sum(1 for c in result["signatures"] if c["valid"])
        parts.append(
            Text.assemble(
                ("Verified: ", "bold green"),
                f"{result['version']} (sha256 {result['sha256']}) has {valid} valid signature(s).",
            )
        )
    return Group(*parts)


# -- lifecycle -------------------------------------------------------------------------------------------


@app.command("lifecycle")
def lifecycle_plan(
    image_ref: ImageRef,
    apply: Annotated[bool, typer.Option("--apply", help="Carry the plan out now.")] = False,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """What retention and deprecation do next to an image's versions, and the servers each step
    affects; --apply does it now rather than at the next housekeeping round."""
    with connect(url) as client:
        image = resolve_image(client, image_ref, project)
        path = f"{image_path(image['id'])}/lifecycle"
        plan: Record = client.post(f"{path}:apply") if apply else client.get(path)
        if output is OutputFormat.JSON:
            print_json(plan)
            return
        names = {
            v["id"]: v["spec"]["version"] for v in client.list_all(f"{image_path(image['id'])}/versions")
        }
    print_result(lifecycle_panel(plan, names, applied=apply))
    if plan["actions"] and not apply:
        note(f"`sovra image lifecycle {_shell(image['name'])} --apply` carries it out now.")


def _move(
    image_ref: str, version_ref: str, verb: str, project: str | None, output: OutputFormat, url: str | None
) -> Record:
    with connect(url) as client:
        version = version_of(client, image_ref, version_ref, project)
        try:
            moved: Record = client.post(f"{version_path(version)}:{verb}")
        except ApiError as exc:
            if exc.status != 409:
                raise
            hint = "only an active version can be deprecated, and only a deprecated one promoted"
            raise ApiError(exc.problem, hint=hint) from None
    if output is OutputFormat.JSON:
        print_json(moved)
    else:
        print_result(Text.assemble(f"Version {moved['name']} is ", version_state_text(moved["state"]), "."))
    return moved


@app.command()
def deprecate(
    image_ref: ImageRef,
    version_ref: VersionRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Deprecate a version: servers using it keep running, new servers cannot use it."""
    _move(image_ref, version_ref, "deprecate", project, output, url)


@app.command()
def promote(
    image_ref: ImageRef,
    version_ref: VersionRef,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Make a deprecated version active again."""
    _move(image_ref, version_ref, "promote", project, output, url)
