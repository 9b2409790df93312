"""Servers: what the user asked for (spec), and the state model everything else reports in.

The spec holds the wish: which image version and flavor, the SSH keys and user data copied in at
create time, and the desired power state. The status holds what is: ``state`` (one of
:class:`ServerState`, never transitional once the operation that set it has ended), the observed
power state as the hypervisor reported it, where the server runs, and a fault when it failed.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sovra.domain.names import plain_text

SERVER_KIND = "Server"

MAX_USER_DATA_BYTES = 64 * 1024
"""Like Nova: cloud-init user data up to 64 KiB."""

_HOSTNAME_LABEL = re.compile(r"[^a-z0-9-]+")


class ServerState(StrEnum):
    BUILDING = "BUILDING"  # being created or rebuilt
    ACTIVE = "ACTIVE"  # the domain runs (the hypervisor says so)
    SHUTOFF = "SHUTOFF"  # the domain exists and is powered off
    REBOOTING = "REBOOTING"
    RESIZING = "RESIZING"
    DELETING = "DELETING"
    ERROR = "ERROR"  # the last operation failed; ``fault`` says why


TRANSITIONAL_STATES = frozenset(
    {ServerState.BUILDING, ServerState.REBOOTING, ServerState.RESIZING, ServerState.DELETING}
)
"""States that only exist while an operation runs; its end always leaves one of the others."""

PowerWish = Literal["running", "stopped"]


class ServerSpec(BaseModel):
    """What the user wants. Everything a rebuild or a retried step needs is here, resolved: the
    image version by id, the public keys themselves (not the key pair names, which may change)."""

    model_config = ConfigDict(extra="forbid")

    image_version_id: str
    flavor_id: str
    hostname: str = Field(min_length=1, max_length=63)
    ssh_authorized_keys: list[Annotated[str, Field(max_length=16 * 1024)]] = Field(
        default_factory=list, max_length=32
    )
    user_data: str | None = Field(default=None, max_length=MAX_USER_DATA_BYTES)
    server_group_id: str | None = None
    power_state: PowerWish = "running"
    description: Annotated[str, AfterValidator(plain_text)] = Field(default="", max_length=1024)


def hostname_for(name: str) -> str:
    """A valid host name (RFC 1123 label) derived from a server name: ``Web_01`` -> ``web-01``."""
    label = _HOSTNAME_LABEL.sub("-", name.lower()).strip("-")[:63].strip("-")
    return label or "server"


def settled_state(power_running: bool) -> ServerState:
    """The stable state that tells the truth about a server whose domain exists."""
    return ServerState.ACTIVE if power_running else ServerState.SHUTOFF
