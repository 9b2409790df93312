"""The hypervisor driver interface: what the control plane needs from a host, and how to reach it.

Hosts are agentless: a host *is* a libvirt URI. Everything Sovra knows about a host it reads through
that URI, so this module is the only place that decides which driver talks to which URI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

Accelerator = Literal["kvm", "tcg"]

#: Schemes served by the libvirt driver. Plain ``qemu+tcp`` is left out on purpose: it is
#: unauthenticated and unencrypted unless SASL is configured, which we cannot verify from here.
LIBVIRT_SCHEMES = frozenset({"qemu", "qemu+ssh", "qemu+tls", "test"})
#: In-memory hosts, for scale simulation only: ``fake://<name>?cpus=..&memory_mib=..``.
FAKE_SCHEME = "fake"


@dataclass(frozen=True)
class HostInventory:
    """What the scheduler needs to know about a host, as read from the host itself.

    ``memory_mib`` is the host's total RAM; ``disk_gib`` the capacity of its ``default`` storage
    pool (0 when there is none). ``accelerator`` is ``"kvm"`` only when hardware virtualisation is
    really usable, so that the scheduler never places a KVM-only guest on a TCG host.
    """

    hostname: str
    arch: str
    cpu_model: str
    cpus: int
    memory_mib: int
    disk_gib: int
    accelerator: Accelerator
    libvirt_version: str
    hypervisor_version: str


class HostUnreachable(Exception):
    """The host could not be reached or answered with an error.

    The message names the URI (with any password removed) and the hypervisor's own reason, so an
    operator can act on it without reading logs.
    """

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = redact_uri(uri)
        self.reason = _redact_secret(uri, reason)
        super().__init__(f"host {self.uri} is unreachable: {self.reason}")


class UnsupportedURI(ValueError):
    """The URI's scheme names no driver we have (a configuration error, not an outage)."""


class VirtDriver(Protocol):
    """A connection to one host. Implementations must be safe to call from several threads."""

    @property
    def uri(self) -> str:
        """The URI this driver is connected to."""
        ...

    def inventory(self) -> HostInventory:
        """Read the host's capacity and identity; raise :class:`HostUnreachable` on failure."""
        ...

    def alive(self) -> bool:
        """Whether the connection still works (cheap; never raises)."""
        ...

    def close(self) -> None:
        """Release the connection. Idempotent."""
        ...


def connect(uri: str, *, timeout: float = 10) -> VirtDriver:
    """Open a driver for ``uri``, giving up after ``timeout`` seconds.

    Raises :class:`UnsupportedURI` for a scheme we do not serve and :class:`HostUnreachable` when
    the host does not answer in time or refuses the connection.
    """
    scheme = urlsplit(uri).scheme.lower()
    if scheme in LIBVIRT_SCHEMES:
        # Imported here so that the fake driver works where libvirt-python is not installed.
        from sovra.virt.libvirt_driver import LibvirtDriver

        return LibvirtDriver.open(uri, timeout=timeout)
    if scheme == FAKE_SCHEME:
        from sovra.virt.fake import FakeDriver

        return FakeDriver.open(uri)
    known = ", ".join(f"{s}://" for s in sorted(LIBVIRT_SCHEMES | {FAKE_SCHEME}))
    raise UnsupportedURI(
        f"unsupported host URI scheme {scheme + '://' if scheme else '(none)'} in {redact_uri(uri)!r}; "
        f"use one of {known}"
    )


_PASSWORD = re.compile(r"^(?P<head>[^:/?#]+://[^:@/?#]*):(?P<secret>[^@/?#]*)@")


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user info (``user:secret@``) replaced by ``***``."""
    return _PASSWORD.sub(lambda m: f"{m['head']}:***@", uri)


def _redact_secret(uri: str, text: str) -> str:
    """Remove the URI's password from ``text`` too: libvirt sometimes echoes the URI it was given."""
    match = _PASSWORD.match(uri)
    if match and match["secret"]:
        return text.replace(match["secret"], "***")
    return text
