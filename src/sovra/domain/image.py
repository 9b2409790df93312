"""Images, their versions, and the SCS image metadata (scs-0102) every version carries.

An Image is a named line ("Debian 12"); an ImageVersion is one build of it, moving through
``importing → validating → (converting) → testing → active → deprecated → retired``, or ``failed``
with a reason. The bytes are ImageBlobs, content-addressed by SHA-256 and shared between versions.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from sovra.domain.errors import Conflict, InvalidArgument
from sovra.domain.names import plain_text

IMAGE_KIND = "Image"
IMAGE_VERSION_KIND = "ImageVersion"
IMAGE_BLOB_KIND = "ImageBlob"

DISK_FORMATS = ("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso")
_IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9 ._+-]{0,38}[A-Za-z0-9])?$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._+-]{0,20}[A-Za-z0-9])?$")  # "<name>:<version>" ≤ 63
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Visibility(StrEnum):
    PRIVATE = "private"  # the owning project only
    PUBLIC = "public"  # every project may read and boot it


class VersionState(StrEnum):
    IMPORTING = "importing"
    VALIDATING = "validating"
    CONVERTING = "converting"
    TESTING = "testing"
    ACTIVE = "active"
    DEPRECATED = "deprecated"
    RETIRED = "retired"
    FAILED = "failed"


_TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    VersionState.IMPORTING: frozenset({VersionState.VALIDATING, VersionState.FAILED}),
    VersionState.VALIDATING: frozenset({VersionState.CONVERTING, VersionState.TESTING, VersionState.FAILED}),
    VersionState.CONVERTING: frozenset({VersionState.TESTING, VersionState.FAILED}),
    VersionState.TESTING: frozenset({VersionState.ACTIVE, VersionState.FAILED}),
    VersionState.ACTIVE: frozenset({VersionState.DEPRECATED, VersionState.RETIRED}),
    VersionState.DEPRECATED: frozenset({VersionState.ACTIVE, VersionState.RETIRED}),
    VersionState.RETIRED: frozenset(),
    VersionState.FAILED: frozenset(),
}
BOOTABLE_STATES = frozenset({VersionState.ACTIVE})
"""Only active versions may back new servers; deprecated ones keep running servers alive."""


def check_transition(current: VersionState, target: VersionState) -> None:
    if target not in _TRANSITIONS[current]:
        allowed = ", ".join(sorted(_TRANSITIONS[current])) or "none (final state)"
        raise Conflict(f"an image version cannot go from {current} to {target}; from {current}: {allowed}")


def validate_image_name(name: str) -> str:
    if not _IMAGE_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"image name {name!r} is invalid: 1 to 40 letters, digits, spaces, '.', '_', '+' or '-', "
            "starting and ending with a letter or digit (e.g. 'Debian 12')",
            field="name",
        )
    return name


def validate_version(version: str) -> str:
    if not _VERSION_RE.fullmatch(version):
        raise InvalidArgument(
            f"version {version!r} is invalid: 1 to 22 letters, digits, '.', '_', '+' or '-' (e.g. 20241120)",
            field="version",
        )
    return version


def version_resource_name(image_name: str, version: str) -> str:
    """Versions are resources too; their name is "<image>:<version>", unique in the project."""
    return f"{image_name}:{version}"


class RetentionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_last: int = Field(
        default=3, ge=1, le=100, description="Active versions to keep; older ones deprecate."
    )
    hide_superseded: bool = Field(
        default=True, description="Hide all but the newest active version in lists."
    )


class ImageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: Annotated[str, AfterValidator(plain_text)] = Field(default="", max_length=1024)
    visibility: Visibility = Visibility.PRIVATE
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)


ReplaceFrequency = Literal["yearly", "quarterly", "monthly", "weekly", "daily", "critical_bug", "never"]
OsPurpose = Literal["generic", "minimal", "k8snode", "gpu", "network", "custom", "oldgeneric"]


class ScsMetadata(BaseModel):
    """The scs-0102 image metadata. Unknown extra properties are kept (Glance allows them) but
    must be short scalars."""

    model_config = ConfigDict(extra="allow")

    architecture: Literal["x86_64", "aarch64", "risc-v"]
    min_disk: int = Field(ge=1, le=65536, description="GiB")
    min_ram: int = Field(ge=64, le=4 * 1024 * 1024, description="MiB")
    os_distro: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,31}$")]
    os_version: Annotated[str, Field(min_length=1, max_length=32)]
    hw_disk_bus: Literal["virtio", "scsi", "sata", "ide"] | None = None
    os_purpose: OsPurpose | None = None
    replace_frequency: ReplaceFrequency
    provided_until: str = Field(description="YYYY-MM-DD, none or notice")
    uuid_validity: str | None = Field(default=None, description="none, last-N, YYYY-MM-DD, notice or forever")
    image_source: str = Field(max_length=1024, description="download URL or 'private'")
    image_description: str = Field(min_length=1, max_length=1024)
    image_build_date: str = Field(description="YYYY-MM-DD or YYYY-MM-DD hh:mm[:ss] (UTC)")
    image_original_user: str = Field(min_length=1, max_length=64)
    hotfix_hours: int | None = Field(default=None, ge=0)
    patchlevel: str | None = Field(default=None, max_length=64)

    @field_validator("provided_until")
    @classmethod
    def _provided_until(cls, value: str) -> str:
        if value in ("none", "notice") or _is_date(value):
            return value
        raise ValueError("must be YYYY-MM-DD, 'none' or 'notice'")

    @field_validator("uuid_validity")
    @classmethod
    def _uuid_validity(cls, value: str | None) -> str | None:
        if value is None or value in ("none", "notice", "forever") or _is_date(value):
            return value
        if re.fullmatch(r"last-[1-9]\d{0,2}", value):
            return value
        raise ValueError("must be none, last-N, YYYY-MM-DD, notice or forever")

    @field_validator("image_source")
    @classmethod
    def _image_source(cls, value: str) -> str:
        if value == "private" or re.match(r"^(https?|ftps?)://\S+$", value):
            return value
        raise ValueError("must be an http(s)/ftp(s) URL or 'private'")

    @field_validator("image_build_date")
    @classmethod
    def _build_date(cls, value: str) -> str:
        for pattern in ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"):
            try:
                datetime.strptime(value, pattern)
                return value
            except ValueError:
                continue
        raise ValueError("must be YYYY-MM-DD, 'YYYY-MM-DD hh:mm[:ss]' or YYYY-MM-DDThh:mm:ssZ (UTC)")

    @field_validator("os_version", "image_description", "image_original_user")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be printable text")
        return value

    def model_post_init(self, _context: object) -> None:
        for key, value in (self.model_extra or {}).items():
            if key in ("os_hash_algo", "os_hash_value"):
                raise ValueError(f"{key} is computed by Sovra from the bytes and cannot be set")
            if not isinstance(value, str | int | bool) or (isinstance(value, str) and len(value) > 255):
                raise ValueError(
                    f"extra property {key!r} must be a string (up to 255), a number or a boolean"
                )

    def provided_until_date(self) -> date | None:
        return date.fromisoformat(self.provided_until) if _is_date(self.provided_until) else None

    def uuid_validity_date(self) -> date | None:
        return (
            date.fromisoformat(self.uuid_validity)
            if self.uuid_validity and _is_date(self.uuid_validity)
            else None
        )


def _is_date(value: str) -> bool:
    if not _DATE_RE.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


class UploadSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["upload"] = "upload"
    declared_format: Literal["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso"] | None = None
    declared_sha256: str | None = Field(default=None, description="Refused if the bytes hash differently.")

    @field_validator("declared_sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256_RE.fullmatch(value.lower()):
            raise ValueError("must be 64 hexadecimal characters")
        return value.lower() if value else value


class UrlSource(UploadSource):
    type: Literal["url"] = "url"  # type: ignore[assignment]
    url: str = Field(max_length=2048)


class BootTest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    marker: str = Field(
        default=r"login:|Cloud-init v\. .* finished",
        max_length=256,
        description="A regular expression the serial console must print.",
    )
    timeout_seconds: int = Field(default=180, ge=10, le=3600)
    memory_mib: int = Field(default=256, ge=128, le=8192)

    @field_validator("marker")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class ImageVersionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    source: Annotated[UploadSource | UrlSource, Field(discriminator="type")] = Field(
        default_factory=UploadSource
    )
    metadata: ScsMetadata
    disk_format: Literal["qcow2", "raw"] = Field(default="qcow2", description="The format hosts receive.")
    signatures: list[Annotated[str, Field(min_length=16, max_length=1024)]] = Field(
        default_factory=list,
        max_length=8,
        description="cosign sign-blob signatures (base64 DER, the content of a .sig file) of the bytes "
        "to be uploaded; checked against the project's signing keys once the bytes are in.",
    )
    boot_test: BootTest = Field(default_factory=BootTest)


class VersionFacts(BaseModel):
    """What Sovra measured about a version's bytes (status, output only)."""

    size: int | None = None
    virtual_size: int | None = None
    source_format: str | None = None
    disk_format: str | None = None
    sha256: str | None = None
    sha512: str | None = None
    source_blob: str | None = None
    disk_blob: str | None = None
    disk_size: int | None = None
    boot_log_tail: str | None = None
    failure_reason: str | None = None
    signatures: list[dict[str, str]] = Field(default_factory=list)
