"""Hypervisor hosts: a libvirt URI, the capacity read from it, and what the operator allows."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

HOST_KIND = "Host"
_URI_RE = re.compile(
    r"^(qemu(\+(ssh|tls|tcp|unix))?://[^\s]*/(system|session)(\?[^\s]*)?|test:///[^\s]+|fake://[^\s]+)$"
)


class HostState(StrEnum):
    REGISTERING = "registering"  # inventory not read yet
    ENABLED = "enabled"  # takes new servers
    DISABLED = "disabled"  # keeps its servers, takes no new ones
    MAINTENANCE = "maintenance"  # operator work: takes no new servers, expect them to move
    DOWN = "down"  # libvirt does not answer


ADMIN_STATES = (HostState.ENABLED, HostState.DISABLED, HostState.MAINTENANCE)
"""The states an operator sets; ``registering`` and ``down`` are observed, not chosen."""


class AllocationRatios(BaseModel):
    """How much more than the physical capacity may be promised (OpenStack Nova's ratios)."""

    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(default=4.0, gt=0, le=64)
    ram: float = Field(default=1.0, gt=0, le=4)
    disk: float = Field(default=1.0, gt=0, le=4)


class HostSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=8, max_length=512, description="libvirt URI, e.g. qemu:///system")
    allocation_ratios: AllocationRatios = Field(default_factory=AllocationRatios)
    admin_state: HostState = Field(default=HostState.ENABLED, description="enabled, disabled or maintenance")

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if not _URI_RE.fullmatch(value):
            raise ValueError(
                "must be a libvirt URI such as qemu:///system, qemu+ssh://user@host/system or "
                "qemu+tls://host/system (test:/// and fake:// for tests)"
            )
        return value

    @field_validator("admin_state")
    @classmethod
    def _admin_state(cls, value: HostState) -> HostState:
        if value not in ADMIN_STATES:
            raise ValueError("must be enabled, disabled or maintenance")
        return value


class Capacity(BaseModel):
    """What the host offers after allocation ratios (output only)."""

    vcpus: int
    memory_mib: int
    disk_gib: int


def capacity(cpus: int, memory_mib: int, disk_gib: int, ratios: AllocationRatios) -> Capacity:
    return Capacity(
        vcpus=int(cpus * ratios.cpu),
        memory_mib=int(memory_mib * ratios.ram),
        disk_gib=int(disk_gib * ratios.disk),
    )
