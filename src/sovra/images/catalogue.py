"""The declarative image catalogue: a YAML file listing images and their versions, and the plan
that makes the cloud match it.

``sovra image sync FILE`` reads the file with :func:`load_catalogue`, reads what the API has into a
:class:`CurrentState`, and asks :func:`plan` for the ordered list of actions. Everything here is
pure (the only I/O is reading the file), so the rules are tested without a server:

* an image missing from its project is created; one whose description, visibility, retention or
  labels differ is updated (the catalogue owns those fields of the images it lists);
* a version missing from its image is imported from its URL, the server verifying the declared
  SHA-256 while it downloads (a checksum is mandatory: nothing is imported unverified);
* a version that exists with the same URL and checksum is left alone: its bytes are never fetched
  again;
* a version that exists with another URL or checksum (or other metadata) is a **conflict**: the
  catalogue never silently replaces the bytes behind a version; give the new build a new version;
* a **failed** version stays failed (and is reported) unless the sync runs with ``retry_failed``:
  then it is deleted and imported again.

The file format (unknown keys are refused at every level)::

    project: images                 # default project (name or id) of every image
    images:
      - name: Debian 12
        project: images             # optional, overrides the default
        visibility: public          # private (default) or public
        description: Debian 12 (bookworm), generic cloud image
        labels: {os: debian}
        retention: {keep_last: 3, hide_superseded: true}
        disk_format: qcow2          # what hosts receive: qcow2 (default) or raw
        boot_test: {timeout_seconds: 300}   # defaults for every version
        metadata:                   # scs-0102 properties shared by every version
          architecture: x86_64
          min_disk: 2
          min_ram: 512
          os_distro: debian
          os_version: "12"
          replace_frequency: monthly
          provided_until: none
          uuid_validity: last-3
          image_description: https://www.debian.org/releases/bookworm/
          image_original_user: debian
        versions:
          - version: "20261120"
            url: https://cloud.debian.org/images/cloud/bookworm/20261120-1937/debian-12-generic-amd64.qcow2
            checksum: sha256:5f0c...      # required; the server refuses other bytes
            format: qcow2                 # optional declared source format
            metadata: {image_build_date: "2026-11-20"}   # per-version overrides
            boot_test: {enabled: false}                  # per-version overrides

``image_source`` defaults to the version's URL. YAML reads ``2026-11-20`` as a date and ``12`` as a
number; both are turned into the text the API expects, but a decimal like ``22.10`` (which YAML
reads as 22.1) must be quoted.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sovra.domain.errors import InvalidArgument
from sovra.domain.image import (
    BootTest,
    ImageSpec,
    ImageVersionSpec,
    RetentionPolicy,
    ScsMetadata,
    UrlSource,
    Visibility,
    validate_image_name,
    validate_version,
)
from sovra.domain.labels import validate_labels

__all__ = [
    "Action",
    "ActionKind",
    "Catalogue",
    "CatalogueError",
    "CatalogueImage",
    "CatalogueVersion",
    "CurrentImage",
    "CurrentState",
    "CurrentVersion",
    "Plan",
    "Problem",
    "load_catalogue",
    "plan",
]

_CHECKSUM_RE = re.compile(r"sha256:([0-9a-fA-F]{64})")
_ALGORITHM_RE = re.compile(r"^([A-Za-z0-9-]+):")
SourceFormat = Literal["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso"]

_TEXT_METADATA = frozenset(
    name for name, info in ScsMetadata.model_fields.items() if info.annotation in (str, str | None)
)
"""scs-0102 properties that are text even when YAML reads them as numbers (``os_version: 12``)."""
_COMPUTED_METADATA = frozenset({"os_hash_algo", "os_hash_value"})
_KNOWN_EXTRA_METADATA = frozenset(
    {
        "hypervisor_type",
        "hw_rng_model",
        "hw_scsi_model",
        "hw_firmware_type",
        "hw_machine_type",
        "hw_watchdog_action",
        "hw_vif_multiqueue_enabled",
        "hw_mem_encryption",
        "hw_pmu",
        "hw_video_ram",
        "hw_qemu_guest_agent",
        "os_secure_boot",
        "os_hidden",
        "license_included",
        "license_required",
        "subscription_included",
        "subscription_required",
        "maintained_until",
        "l1_support_contact",
    }
)
"""Glance/SCS properties beyond the ScsMetadata fields; they pass as they are."""
_KNOWN_METADATA = frozenset(ScsMetadata.model_fields) | _KNOWN_EXTRA_METADATA


# -- errors -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str  # where in the YAML, e.g. images[2].versions[0].checksum
    message: str


class CatalogueError(ValueError):
    """The catalogue file cannot be used: every problem names the file and the YAML path."""

    def __init__(self, file: str, problems: Sequence[Problem]) -> None:
        self.file = file
        self.problems = list(problems)
        super().__init__("\n".join(f"{file}: {p.path}: {p.message}" for p in self.problems))


# -- the file as written -------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BootTestOverride(_Strict):
    """Boot-test settings; unset fields come from the image's defaults, then Sovra's."""

    enabled: bool | None = None
    marker: str | None = None
    timeout_seconds: int | None = None
    memory_mib: int | None = None

    def values(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class VersionEntry(_Strict):
    version: str
    url: str = Field(max_length=2048)
    checksum: str
    format: SourceFormat | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    boot_test: BootTestOverride = Field(default_factory=BootTestOverride)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        if isinstance(value, bool | float):
            raise ValueError(
                f"write the version quoted (YAML read it as {value!r}), e.g. version: '20261120'"
            )
        if isinstance(value, int):
            return str(value)
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        try:
            return validate_version(value)
        except InvalidArgument as exc:
            raise ValueError(exc.detail) from None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, value: str) -> str:
        match = _CHECKSUM_RE.fullmatch(value.strip())
        if match:
            return f"sha256:{match[1].lower()}"
        algorithm = _ALGORITHM_RE.match(value)
        if algorithm and algorithm[1].lower() != "sha256":
            raise ValueError(
                f"{algorithm[1]!r} checksums are not supported: write sha256:<64 hex digits> "
                "(the server verifies SHA-256 while it downloads)"
            )
        raise ValueError("must be sha256: followed by 64 hexadecimal digits")


class ImageEntry(_Strict):
    name: str
    project: str | None = Field(default=None, min_length=1, max_length=63)
    visibility: Visibility = Visibility.PRIVATE
    description: str = Field(default="", max_length=1024)
    labels: dict[str, str] = Field(default_factory=dict)
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    disk_format: Literal["qcow2", "raw"] = "qcow2"
    boot_test: BootTestOverride = Field(default_factory=BootTestOverride)
    metadata: dict[str, Any] = Field(default_factory=dict)
    versions: list[VersionEntry] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return validate_image_name(value)
        except InvalidArgument as exc:
            raise ValueError(exc.detail) from None

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        try:
            ImageSpec(description=value)
        except ValidationError as exc:
            raise ValueError(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            return validate_labels(value)
        except InvalidArgument as exc:
            raise ValueError(exc.detail) from None


class CatalogueFile(_Strict):
    project: str | None = Field(default=None, min_length=1, max_length=63)
    images: list[ImageEntry]


_MODEL_AT: dict[str, type[BaseModel]] = {
    "": CatalogueFile,
    "images": ImageEntry,
    "versions": VersionEntry,
    "boot_test": BootTestOverride,
    "retention": RetentionPolicy,
}


# -- the catalogue as the planner sees it ----------------------------------------------------------------


class CatalogueVersion(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str = Field(description="Where it is in the file, e.g. images[0].versions[1].")
    spec: ImageVersionSpec

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def source(self) -> UrlSource:
        assert isinstance(self.spec.source, UrlSource)
        return self.spec.source

    @property
    def url(self) -> str:
        return self.source.url

    @property
    def sha256(self) -> str:
        assert self.source.declared_sha256 is not None
        return self.source.declared_sha256


class CatalogueImage(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    name: str
    project: str = Field(description="The project's name or id, as written.")
    labels: dict[str, str]
    spec: ImageSpec
    versions: list[CatalogueVersion]


class Catalogue(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str
    images: list[CatalogueImage]


# -- loading ---------------------------------------------------------------------------------------------


def load_catalogue(path: Path | str) -> Catalogue:
    """Read and check a catalogue file; ``CatalogueError`` lists every problem found."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CatalogueError(file, [Problem("(file)", f"cannot read it: {reason}")]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(YAML)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogueError(file, [Problem(where, f"not valid YAML: {problem}")]) from None
    if not isinstance(document, dict):
        found = "nothing" if document is None else f"a {type(document).__name__}"
        raise CatalogueError(
            file, [Problem("(root)", f"must be a mapping with an 'images' list, found {found}")]
        )
    try:
        parsed = CatalogueFile.model_validate(document)
    except ValidationError as exc:
        raise CatalogueError(file, [_problem_of(error) for error in exc.errors()]) from None
    problems: list[Problem] = []
    images = [_resolve_image(parsed, i, entry, problems) for i, entry in enumerate(parsed.images)]
    _check_duplicates(images, problems)
    if problems:
        raise CatalogueError(file, list(dict.fromkeys(problems)))  # an image default's problem once
    return Catalogue(file=file, images=[image for image in images if image is not None])


def yaml_path(loc: Sequence[int | str]) -> str:
    """``('images', 2, 'versions', 0, 'checksum')`` as ``images[2].versions[0].checksum``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(root)"


def _problem_of(error: Mapping[str, Any]) -> Problem:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return Problem(yaml_path(loc), f"unknown key; {_allowed_keys(loc[:-1])}")
    if kind == "missing":
        return Problem(yaml_path(loc), "required")
    message = str(error["msg"]).removeprefix("Value error, ")
    return Problem(yaml_path(loc), message)


def _allowed_keys(parent: Sequence[int | str]) -> str:
    names = [p for p in parent if isinstance(p, str)]
    model = _MODEL_AT.get(names[-1] if names else "")
    if model is None:
        return "check the spelling"
    return "allowed here: " + ", ".join(model.model_fields)


def _plain_metadata(value: Any, key: str) -> Any:
    """A metadata value as the API takes it: dates as text, whole numbers as text for text fields."""
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if key in _TEXT_METADATA and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _metadata_problem(key: str, value: Any) -> str | None:
    """What is wrong with one metadata value on its own (before the whole set is checked)."""
    if key in _COMPUTED_METADATA:
        return "computed by Sovra from the bytes; it cannot be set"
    if isinstance(value, float) and key in _TEXT_METADATA:
        return f"write it quoted: YAML read it as the number {value!r}, which may have lost digits"
    if key not in _KNOWN_METADATA:
        close = difflib.get_close_matches(key, sorted(_KNOWN_METADATA), n=1, cutoff=0.8)
        if close:
            return f"unknown property; did you mean {close[0]!r}?"
        if not isinstance(value, str | int | float | bool) or (isinstance(value, str) and len(value) > 255):
            return "an extra property must be a string (up to 255 characters), a number or a boolean"
    return None


def _metadata_layer(
    raw: Mapping[str, Any], path: tuple[int | str, ...], problems: list[Problem]
) -> tuple[dict[str, Any], set[str]]:
    """The values that pass on their own, and the names of those that did not (reported already)."""
    layer: dict[str, Any] = {}
    refused: set[str] = set()
    for key, value in raw.items():
        name = str(key)
        plain = _plain_metadata(value, name)
        problem = _metadata_problem(name, plain)
        if problem is not None:
            problems.append(Problem(yaml_path((*path, name)), problem))
            refused.add(name)
        else:
            layer[name] = plain
    return layer, refused


def _resolve_image(
    parsed: CatalogueFile, index: int, entry: ImageEntry, problems: list[Problem]
) -> CatalogueImage | None:
    where: tuple[int | str, ...] = ("images", index)
    before = len(problems)
    project = entry.project or parsed.project
    if project is None:
        problems.append(
            Problem(yaml_path((*where, "project")), "required (here, or as the top-level 'project')")
        )
    defaults, refused = _metadata_layer(entry.metadata, (*where, "metadata"), problems)
    versions: list[CatalogueVersion] = []
    for v_index, version in enumerate(entry.versions):
        resolved = _resolve_version(
            entry, defaults, refused, (*where, "versions", v_index), version, problems
        )
        if resolved is not None:
            versions.append(resolved)
    if len(problems) > before or project is None:
        return None
    return CatalogueImage(
        path=yaml_path(where),
        name=entry.name,
        project=project,
        labels=entry.labels,
        spec=ImageSpec(description=entry.description, visibility=entry.visibility, retention=entry.retention),
        versions=versions,
    )


def _resolve_version(
    image: ImageEntry,
    defaults: Mapping[str, Any],
    refused_defaults: set[str],
    where: tuple[int | str, ...],
    entry: VersionEntry,
    problems: list[Problem],
) -> CatalogueVersion | None:
    before = len(problems)
    overrides, refused = _metadata_layer(entry.metadata, (*where, "metadata"), problems)
    refused |= refused_defaults
    metadata = {"image_source": entry.url, **defaults, **overrides}
    boot_test = {**image.boot_test.values(), **entry.boot_test.values()}
    image_where = where[:2]
    try:
        checked_metadata = ScsMetadata.model_validate(metadata)
    except ValidationError as exc:
        for error in exc.errors():
            if error["loc"] and str(error["loc"][0]) in refused:
                continue  # its value was refused above; "required" would only repeat that
            problems.append(_layered_problem(error, "metadata", where, image_where, overrides, defaults))
        checked_metadata = None
    try:
        checked_boot = BootTest.model_validate(boot_test)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(
                _layered_problem(
                    error, "boot_test", where, image_where, entry.boot_test.values(), image.boot_test.values()
                )
            )
        checked_boot = None
    if len(problems) > before or checked_metadata is None or checked_boot is None:
        return None
    source = {
        "type": "url",
        "url": entry.url,
        "declared_sha256": entry.checksum.removeprefix("sha256:"),
        "declared_format": entry.format,
    }
    try:
        spec = ImageVersionSpec.model_validate(
            {
                "version": entry.version,
                "source": source,
                "metadata": checked_metadata,
                "disk_format": image.disk_format,
                "boot_test": checked_boot,
            }
        )
    except ValidationError as exc:  # what the API would refuse beyond the checks above
        for error in exc.errors():
            problems.append(Problem(yaml_path((*where, *error["loc"])), str(error["msg"])))
        return None
    return CatalogueVersion(path=yaml_path(where), spec=spec)


def _layered_problem(
    error: Mapping[str, Any],
    section: str,
    version_where: tuple[int | str, ...],
    image_where: tuple[int | str, ...],
    overrides: Mapping[str, Any],
    defaults: Mapping[str, Any],
) -> Problem:
    """A problem of a merged value, placed where the value came from: the version or the image."""
    loc = tuple(error["loc"])
    key = str(loc[0]) if loc else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return Problem(
            yaml_path((*version_where, section, key)),
            f"required (set it here or in {yaml_path((*image_where, section))})",
        )
    if key and key in overrides:
        return Problem(yaml_path((*version_where, section, *loc)), message)
    if key and key in defaults:
        return Problem(yaml_path((*image_where, section, *loc)), message)
    return Problem(yaml_path((*version_where, section, *loc)), message)


def _check_duplicates(images: Sequence[CatalogueImage | None], problems: list[Problem]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for image in images:
        if image is None:
            continue
        key = (image.project, image.name)
        if key in seen:
            problems.append(
                Problem(f"{image.path}.name", f"image {image.name!r} is listed twice (first at {seen[key]})")
            )
        seen.setdefault(key, image.path)
        versions: dict[str, str] = {}
        for version in image.versions:
            if version.version in versions:
                problems.append(
                    Problem(
                        f"{version.path}.version",
                        f"version {version.version!r} is listed twice (first at {versions[version.version]})",
                    )
                )
            versions.setdefault(version.version, version.path)


# -- what the API has -------------------------------------------------------------------------------------


_RUNNING_STATES = frozenset({"importing", "validating", "converting", "testing"})


@dataclass(frozen=True)
class CurrentVersion:
    id: str
    version: str
    state: str
    source_type: str
    url: str | None
    declared_sha256: str | None
    sha256: str | None  # what the server measured, once the bytes are in
    disk_format: str
    metadata: dict[str, Any]
    operation_id: str | None = None
    failure_reason: str | None = None

    @classmethod
    def from_api(cls, record: Mapping[str, Any]) -> CurrentVersion:
        """From a ``GET /v1/images/{id}/versions`` item."""
        spec = record["spec"]
        source = spec.get("source") or {}
        facts = record.get("facts") or {}
        return cls(
            id=record["id"],
            version=spec["version"],
            state=record["state"],
            source_type=source.get("type", "upload"),
            url=source.get("url"),
            declared_sha256=source.get("declared_sha256"),
            sha256=facts.get("sha256"),
            disk_format=spec.get("disk_format", "qcow2"),
            metadata=dict(spec.get("metadata") or {}),
            operation_id=record.get("operation_id"),
            failure_reason=facts.get("failure_reason"),
        )


@dataclass(frozen=True)
class CurrentImage:
    id: str
    name: str
    project_id: str
    spec: ImageSpec
    labels: dict[str, str]
    version: int  # the resource version, sent back as If-Match
    versions: tuple[CurrentVersion, ...] = ()

    @classmethod
    def from_api(cls, record: Mapping[str, Any], versions: Sequence[Mapping[str, Any]]) -> CurrentImage:
        """From a ``GET /v1/images`` item and its ``GET …/versions`` items."""
        return cls(
            id=record["id"],
            name=record["name"],
            project_id=record["project_id"],
            spec=ImageSpec.model_validate(record["spec"]),
            labels=dict(record.get("labels") or {}),
            version=int(record["version"]),
            versions=tuple(CurrentVersion.from_api(v) for v in versions),
        )

    def find(self, version: str) -> CurrentVersion | None:
        return next((v for v in self.versions if v.version == version), None)


@dataclass(frozen=True)
class CurrentState:
    """What the API has for the catalogue's images.

    ``projects`` maps each project reference of the catalogue (name or id, as written) to the
    project's id, or None when there is no such project; ``images`` is keyed by (project id, name).
    """

    projects: Mapping[str, str | None] = field(default_factory=dict)
    images: Mapping[tuple[str, str], CurrentImage] = field(default_factory=dict)


# -- the plan ---------------------------------------------------------------------------------------------


class ActionKind(StrEnum):
    CREATE_IMAGE = "create-image"
    UPDATE_IMAGE = "update-image"
    CREATE_VERSION = "create-version"  # import from the URL
    RETRY_VERSION = "retry-version"  # delete the failed version and import it again
    NOTHING = "nothing-to-do"
    IN_PROGRESS = "in-progress"  # being imported already: nothing to start
    FAILED = "failed"  # a failed version, kept until --retry-failed
    CONFLICT = "conflict"  # exists with other bytes or metadata: refused
    ERROR = "error"  # cannot be planned (e.g. no such project)


CHANGES = frozenset(
    {ActionKind.CREATE_IMAGE, ActionKind.UPDATE_IMAGE, ActionKind.CREATE_VERSION, ActionKind.RETRY_VERSION}
)
PROBLEMS = frozenset({ActionKind.FAILED, ActionKind.CONFLICT, ActionKind.ERROR})


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    image: CatalogueImage
    project_id: str | None
    detail: str
    version: CatalogueVersion | None = None
    current_image: CurrentImage | None = None
    current_version: CurrentVersion | None = None
    fields: tuple[str, ...] = ()  # update-image: what differs; conflict: what differs

    @property
    def is_change(self) -> bool:
        return self.kind in CHANGES

    @property
    def is_problem(self) -> bool:
        return self.kind in PROBLEMS

    def to_json(self) -> dict[str, Any]:
        return {
            "action": str(self.kind),
            "image": self.image.name,
            "project": self.image.project,
            "project_id": self.project_id,
            "version": self.version.version if self.version else None,
            "detail": self.detail,
            "fields": list(self.fields),
            "image_id": self.current_image.id if self.current_image else None,
            "version_id": self.current_version.id if self.current_version else None,
            "path": self.version.path if self.version else self.image.path,
        }


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]

    @property
    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.is_change]

    @property
    def problems(self) -> list[Action]:
        return [a for a in self.actions if a.is_problem]

    @property
    def conflicts(self) -> list[Action]:
        return [a for a in self.actions if a.kind is ActionKind.CONFLICT]

    def to_json(self) -> list[dict[str, Any]]:
        return [a.to_json() for a in self.actions]


def plan(catalogue: Catalogue, current: CurrentState, *, retry_failed: bool = False) -> Plan:
    """The actions, in order (each image, then its versions, as listed), that make ``current``
    match ``catalogue``. Nothing is deleted except, with ``retry_failed``, failed versions."""
    actions: list[Action] = []
    for image in catalogue.images:
        project_id = current.projects.get(image.project)
        if project_id is None:
            count = len(image.versions)
            actions.append(
                Action(
                    ActionKind.ERROR,
                    image,
                    None,
                    f"no project {image.project!r}; its {count} version(s) are not synced",
                )
            )
            continue
        existing = current.images.get((project_id, image.name))
        actions.append(_image_action(image, project_id, existing))
        for version in image.versions:
            found = existing.find(version.version) if existing else None
            actions.append(_version_action(image, project_id, version, existing, found, retry_failed))
    return Plan(tuple(actions))


def _image_action(image: CatalogueImage, project_id: str, existing: CurrentImage | None) -> Action:
    if existing is None:
        return Action(
            ActionKind.CREATE_IMAGE,
            image,
            project_id,
            f"{image.spec.visibility}, {len(image.versions)} version(s)",
        )
    differences = _image_differences(image, existing)
    if not differences:
        return Action(ActionKind.NOTHING, image, project_id, "image up to date", current_image=existing)
    return Action(
        ActionKind.UPDATE_IMAGE,
        image,
        project_id,
        "; ".join(text for _, text in differences),
        current_image=existing,
        fields=tuple(name for name, _ in differences),
    )


def _image_differences(image: CatalogueImage, existing: CurrentImage) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    want, have = image.spec, existing.spec
    if want.description != have.description:
        found.append(("description", f"description {_short(have.description)} → {_short(want.description)}"))
    if want.visibility != have.visibility:
        found.append(("visibility", f"visibility {have.visibility} → {want.visibility}"))
    for name in ("keep_last", "hide_superseded"):
        old, new = getattr(have.retention, name), getattr(want.retention, name)
        if old != new:
            found.append((f"retention.{name}", f"retention.{name} {old} → {new}"))
    if image.labels != existing.labels:
        found.append(("labels", f"labels {_labels_change(existing.labels, image.labels)}"))
    return found


def _labels_change(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    parts = [f"+{k}={v}" for k, v in sorted(new.items()) if old.get(k) != v]
    parts += [f"-{k}" for k in sorted(old) if k not in new]
    return " ".join(parts)


def _short(text: str, limit: int = 40) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(text)


def _version_action(
    image: CatalogueImage,
    project_id: str,
    version: CatalogueVersion,
    existing: CurrentImage | None,
    found: CurrentVersion | None,
    retry_failed: bool,
) -> Action:
    def action(kind: ActionKind, detail: str, fields: tuple[str, ...] = ()) -> Action:
        return Action(kind, image, project_id, detail, version, existing, found, fields)

    source = f"import {version.url} (sha256 {version.sha256[:12]}…)"
    if found is None:
        return action(ActionKind.CREATE_VERSION, source)
    if found.state == "failed":
        reason = found.failure_reason or "no reason recorded"
        if retry_failed:
            return action(ActionKind.RETRY_VERSION, f"failed ({reason}); delete it and {source}")
        return action(ActionKind.FAILED, f"failed ({reason}); --retry-failed deletes it and imports it again")
    differences = _version_differences(version, found)
    if differences:
        return action(
            ActionKind.CONFLICT,
            "; ".join(text for _, text in differences)
            + ". A version never changes its bytes or metadata: give the new build a new version",
            tuple(name for name, _ in differences),
        )
    if found.state in _RUNNING_STATES:
        operation = f" (operation {found.operation_id})" if found.operation_id else ""
        return action(ActionKind.IN_PROGRESS, f"{found.state}{operation}")
    return action(ActionKind.NOTHING, f"{found.state}, sha256 {(found.sha256 or version.sha256)[:12]}…")


def _version_differences(version: CatalogueVersion, found: CurrentVersion) -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = []
    if found.source_type != "url":
        result.append(("url", "it was uploaded, not imported from a URL"))
    elif found.url != version.url:
        result.append(("url", f"its URL is {found.url}, the catalogue says {version.url}"))
    have = found.declared_sha256 or found.sha256
    if have is None:
        result.append(("checksum", "it has no checksum to compare with"))
    elif have != version.sha256:
        result.append(("checksum", f"its sha256 is {have[:12]}…, the catalogue says {version.sha256[:12]}…"))
    if found.disk_format != version.spec.disk_format:
        result.append(
            (
                "disk_format",
                f"its disk format is {found.disk_format}, the catalogue says {version.spec.disk_format}",
            )
        )
    changed = _metadata_changes(version.spec.metadata, found.metadata)
    if (  # an image_source that only follows the URL is not a second difference
        found.url != version.url
        and version.spec.metadata.image_source == version.url
        and found.metadata.get("image_source") == found.url
    ):
        changed = [name for name in changed if name != "image_source"]
    if changed:
        result.append(("metadata", "its metadata differs in " + ", ".join(changed)))
    return result


def _metadata_changes(want: ScsMetadata, have: Mapping[str, Any]) -> list[str]:
    try:
        have_dump = ScsMetadata.model_validate(have).model_dump(mode="json")
    except ValidationError:
        have_dump = dict(have)
    want_dump = want.model_dump(mode="json")
    keys = sorted(set(want_dump) | set(have_dump))
    return [k for k in keys if want_dump.get(k) != have_dump.get(k)]
