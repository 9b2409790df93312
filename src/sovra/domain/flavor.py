"""Flavors: the sizes a server can have, and the rules for flavors with SCS names (scs-0100, scs-0103).

A flavor is global (no project) and public: the provider's catalogue, read by every caller and
changed by admins only. A flavor whose name starts with ``SCS-`` must follow the SCS naming standard
and provide at least what its name states; its ``scs:`` extra specs are derived from the name.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sovra.compute.flavor_names import (
    CPU_TYPES,
    DISK_TYPES,
    FlavorName,
    FlavorNameError,
    ParsedName,
    is_scs_name,
    parse,
)
from sovra.domain.errors import InvalidArgument
from sovra.domain.ids import is_id
from sovra.domain.names import plain_text

FLAVOR_KIND = "Flavor"
FLAVOR_ACTIVE = "active"
STANDARD_LABEL = "sovra.io/standard"
"""Label of the flavors Sovra ships (value ``scs-0103``)."""
MAX_RAM_MIB = 16 * 1024 * 1024  # 16 TiB
MAX_DISK_GIB = 1024 * 1024  # 1 PiB
MAX_EXTRA_SPECS = 64

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$")
_SCS_KEY_RE = re.compile(r"^scs:(cpu-type|disk\d+-type|name-v\d+)$")

ExtraSpecKey = Annotated[
    str,
    Field(
        min_length=3,
        max_length=255,
        pattern=r"^[a-z][a-z0-9_]*:[A-Za-z0-9_.:-]+$",
        description="namespace:key, e.g. scs:cpu-type or hw:cpu_policy",
    ),
]
ExtraSpecValue = Annotated[str, AfterValidator(plain_text), Field(max_length=255)]


class FlavorSpec(BaseModel):
    """What a server of this flavor gets."""

    model_config = ConfigDict(extra="forbid")

    vcpus: int = Field(ge=1, le=1024, description="Virtual CPUs.")
    ram_mib: int = Field(ge=128, le=MAX_RAM_MIB, description="Memory in MiB (4 GiB = 4096).")
    disk_gib: int = Field(
        default=0,
        ge=0,
        le=MAX_DISK_GIB,
        description="Root disk size in GiB. 0: no fixed size; the root disk is as large as the image "
        "needs (its min_disk, or its virtual size if that is larger), as with Nova's disk=0.",
    )
    extra_specs: dict[ExtraSpecKey, ExtraSpecValue] = Field(
        default_factory=dict,
        max_length=MAX_EXTRA_SPECS,
        description="Properties for the scheduler and the guest (OpenStack extra specs). For SCS names "
        "the scs: keys are filled in from the name; given ones must match it.",
    )
    description: Annotated[str, AfterValidator(plain_text)] = Field(default="", max_length=1024)


class ScsFacts(BaseModel):
    """What an SCS name states, decoded (output only)."""

    canonical_name: str = Field(description="The name in canonical v3 form.")
    short_name: str = Field(description="The short variant every provider should also offer.")
    v1_name: str = Field(description="The name in the deprecated v1 syntax.")
    syntax: str = Field(description="The syntax the name is written in: v3, v2 or v1.")
    cpu_type: str = Field(description="crowded-core, shared-core, dedicated-thread or dedicated-core.")
    disk_type: str | None = Field(description="network, hdd, ssd or nvme; None when there is no root disk.")
    disk_count: int = Field(description="Disks the name states (0: boot from a volume).")
    meaning: str = Field(description="What the name promises, in words.")
    warnings: list[str] = Field(description="Deprecated syntax, non-canonical spelling, known pitfalls.")

    @classmethod
    def of(cls, parsed: ParsedName) -> ScsFacts:
        name = parsed.name
        warnings = list(parsed.warnings)
        if name.disk is not None and name.disk.size_gb is None:
            warnings.append(
                "the SCS compliance test (scs-0100-semantics-check) aborts on a disk part without a "
                "size; prefer a size (e.g. -20n) or no disk part"
            )
        return cls(
            canonical_name=name.generate(),
            short_name=name.shorten().generate(),
            v1_name=name.v1_name(),
            syntax=parsed.syntax,
            cpu_type=CPU_TYPES[name.cpu_type],
            disk_type=DISK_TYPES.get(name.disk.type, "network") if name.disk else None,
            disk_count=name.disk.count if name.disk else 0,
            meaning=name.describe(),
            warnings=warnings,
        )


def scs_facts(name: str) -> ScsFacts | None:
    """The facts of an SCS name; None for other names (and for a name stored under rules this version
    no longer accepts, so that reading it never fails)."""
    if not is_scs_name(name):
        return None
    try:
        return ScsFacts.of(parse(name))
    except FlavorNameError:
        return None


def validate_flavor_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name) or is_id(name.lower()):
        raise InvalidArgument(
            f"flavor name {name!r} is invalid: use 1 to 63 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit, and not shaped like an id",
            field="name",
        )
    return name


def validate_flavor(name: str, spec: FlavorSpec) -> FlavorSpec:
    """Check a flavor against its name and return its spec with the ``scs:`` extra specs filled in.

    An ``SCS-`` name must parse, the flavor must provide at least what it states, and given ``scs:``
    extra specs must equal what the name derives. Other names may carry ``scs:`` extra specs too
    (``scs:name-vN`` makes the flavor a variant of that SCS name); their meaning must hold.
    """
    if is_scs_name(name):
        flavor = _parse_name(name, "name")
        _check_capacity(name, flavor, spec)
        derived = flavor.extra_specs()
        _check_scs_specs(name, spec.extra_specs, derived)
        merged = dict(sorted({**spec.extra_specs, **derived}.items()))
        if len(merged) > MAX_EXTRA_SPECS:
            raise InvalidArgument(
                f"with the {len(derived)} scs: extra specs {name} derives, the flavor would have "
                f"{len(merged)} extra specs, more than {MAX_EXTRA_SPECS}: give fewer",
                field="spec.extra_specs",
            )
        return spec.model_copy(update={"extra_specs": merged})
    for key, value in spec.extra_specs.items():
        if key.startswith("scs:"):
            _check_scs_spec(key, value, spec)
    return spec


def _parse_name(name: str, field: str) -> FlavorName:
    try:
        return parse(name).name
    except FlavorNameError as exc:
        raise InvalidArgument(
            f"{exc}. A name starting with 'SCS-' must follow the SCS flavor naming standard (scs-0100): "
            "fix it (`sovra flavor parse NAME` explains a name), or choose one that does not start "
            "with 'SCS-'",
            field=field,
        ) from None


def _check_capacity(name: str, flavor: FlavorName, spec: FlavorSpec) -> None:
    """A flavor may give more than its name states, never less."""
    rename = "or choose a name that states less"
    if spec.vcpus < flavor.cpus:
        raise InvalidArgument(
            f"{name} states {flavor.cpus} vCPUs but spec.vcpus is {spec.vcpus}: "
            f"give it at least {flavor.cpus}, {rename}",
            field="spec.vcpus",
        )
    if spec.ram_mib < flavor.ram_mib:
        raise InvalidArgument(
            f"{name} states {flavor.ram_gib:g} GiB of RAM but spec.ram_mib is {spec.ram_mib}: "
            f"give it at least {flavor.ram_mib} MiB, {rename}",
            field="spec.ram_mib",
        )
    size = flavor.disk.size_gb if flavor.disk else None
    if size is not None and spec.disk_gib < size:
        raise InvalidArgument(
            f"{name} states a {size} GB root disk but spec.disk_gib is {spec.disk_gib}: "
            f"give it at least {size}, {rename}",
            field="spec.disk_gib",
        )


def _check_scs_specs(name: str, given: dict[str, str], derived: dict[str, str]) -> None:
    for key, value in given.items():
        if not key.startswith("scs:"):
            continue
        field = f"spec.extra_specs.{key}"
        if key not in derived:
            raise InvalidArgument(
                f"{key} does not follow from {name}, which derives {', '.join(derived)}: remove it",
                field=field,
            )
        if value != derived[key]:
            raise InvalidArgument(
                f"{key} is {value!r} but {name} states {derived[key]!r}: remove it (it is filled in "
                "from the name) or set it to that value",
                field=field,
            )


def _check_scs_spec(key: str, value: str, spec: FlavorSpec) -> None:
    """One ``scs:`` extra spec of a flavor without an SCS name."""
    field = f"spec.extra_specs.{key}"
    if not _SCS_KEY_RE.fullmatch(key):
        raise InvalidArgument(
            f"{key} is not an SCS extra spec: scs-0103 defines scs:cpu-type, scs:diskN-type and "
            "scs:name-vN, and the scs: namespace takes no others",
            field=field,
        )
    if key == "scs:cpu-type" and value not in CPU_TYPES.values():
        raise InvalidArgument(f"{key} must be one of {', '.join(CPU_TYPES.values())}", field=field)
    if key.endswith("-type") and key != "scs:cpu-type" and value not in DISK_TYPES.values():
        raise InvalidArgument(f"{key} must be one of {', '.join(DISK_TYPES.values())}", field=field)
    if key.startswith("scs:name-v"):
        _check_capacity(value, _parse_name(value, field), spec)
