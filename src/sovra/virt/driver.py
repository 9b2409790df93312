"""The hypervisor driver interface: what the control plane needs from a host, and how to reach it.

Hosts are agentless: a host *is* a libvirt URI. Everything Sovra knows about a host it reads through
that URI, so this module is the only place that decides which driver talks to which URI.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO, Literal, Protocol
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


class PowerState(StrEnum):
    """What the hypervisor says about a domain (never what anyone wants it to be)."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTTING_DOWN = "shutting-down"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    MISSING = "missing"  # no domain of that name on the host
    UNKNOWN = "unknown"  # libvirt's "no state", blocked, pm-suspended


#: The storage pool every Sovra volume lives in; created as a directory pool when missing.
STORAGE_POOL = "default"
STORAGE_POOL_PATH = "/var/lib/libvirt/images"


@dataclass(frozen=True)
class DomainSpec:
    """One server's virtual machine. ``id`` is the server id: the domain's name *and* UUID, so a
    retried define finds the domain it made before instead of making a second one.

    ``root_volume`` (a qcow2 overlay) and ``seed_volume`` (a NoCloud ISO, optional) are names of
    volumes in :data:`STORAGE_POOL`. ``accelerator`` picks ``<domain type='kvm'>`` or ``'qemu'``
    (TCG). The serial console goes to a log the driver can read back (:meth:`VirtDriver.console_log`).
    """

    id: str
    vcpus: int
    memory_mib: int
    accelerator: Accelerator
    root_volume: str
    seed_volume: str | None = None
    arch: str = "x86_64"


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    path: str
    capacity_bytes: int  # the virtual size the guest sees
    allocation_bytes: int  # bytes used on the host


class VirtError(Exception):
    """The host answered but refused or failed the request. The message names the domain or volume
    and gives the hypervisor's reason (a host that does not answer is :class:`HostUnreachable`)."""


class DomainNotFound(VirtError):
    """No domain of that name exists on the host (raised by calls that need one)."""


class VolumeNotFound(VirtError):
    """No volume of that name exists in :data:`STORAGE_POOL` (raised by calls that need one)."""


#: ``callback(domain_name, power_state)``; called from a thread of the watch (never the caller's),
#: one event after the other, in the order the host reported them.
EventCallback = Callable[[str, PowerState], None]


class EventWatch(Protocol):
    def alive(self) -> bool:
        """False once the watch is closed or its connection was lost (the host died or stopped
        answering keepalives): events may have been missed, so open a new watch and resync."""
        ...

    def close(self) -> None:
        """Stop delivering events. Idempotent."""
        ...


class HostUnreachable(Exception):
    """The host could not be reached, or the connection to it broke (``inventory`` also reports a
    host that answers with an error this way; other calls raise :class:`VirtError` for that).

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

    # -- volumes in STORAGE_POOL (the pool is created on first use when missing) ------------------
    # Calls that need an existing volume raise VolumeNotFound; a bad argument raises ValueError
    # before anything is changed on the host; any other refusal raises VirtError.

    def volume(self, name: str) -> VolumeInfo | None:
        """The volume ``name``, or None when it does not exist."""
        ...

    def upload_volume(self, name: str, source: BinaryIO, size: int) -> VolumeInfo:
        """Create ``name`` holding exactly the ``size`` bytes read from ``source`` (streamed through
        libvirt, so it works on remote hosts). A partial volume from an earlier failed attempt is
        replaced; on failure nothing named ``name`` is left behind. ValueError when ``source`` holds
        fewer or more than ``size`` bytes; whatever ``source.read`` raises propagates."""
        ...

    def volume_sha256(self, name: str) -> str:
        """SHA-256 (hex) of the volume's bytes, read back through libvirt."""
        ...

    def download_volume(self, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The volume's bytes, streamed through libvirt. The stream is opened by the call itself
        (VolumeNotFound, HostUnreachable are raised there); later failures arise while iterating.
        Closing the iterator early aborts the stream."""
        ...

    def create_overlay(self, name: str, backing: str, backing_format: str, capacity_bytes: int) -> VolumeInfo:
        """A qcow2 volume over the volume ``backing``; idempotent (an existing one is returned).
        ``backing_format`` is ``qcow2`` or ``raw``; ``capacity_bytes`` may not be smaller than the
        backing volume's virtual size (ValueError); VolumeNotFound names a missing backing."""
        ...

    def resize_volume(self, name: str, capacity_bytes: int) -> None:
        """Grow the volume's virtual size; the same size is a no-op, a smaller one a ValueError.
        A volume a running domain uses is grown through that domain (the guest sees it at once)."""
        ...

    def flatten_volume(self, source: str, target: str) -> VolumeInfo:
        """A standalone qcow2 copy of ``source`` with its backing chain merged in (for snapshots);
        an existing ``target`` is replaced, and a failed copy leaves no ``target``.

        A running (or paused) domain that uses ``source`` keeps running: the copy is a
        crash-consistent point-in-time image taken by the hypervisor (pausing would not help,
        since the running emulator keeps the image locked against every other reader)."""
        ...

    def delete_volume(self, name: str) -> None:
        """Delete the volume; idempotent."""
        ...

    # -- domains ------------------------------------------------------------------------------

    def define_domain(self, spec: DomainSpec) -> None:
        """Define (or redefine with the new spec) the persistent domain ``spec.id``. ValueError
        when the spec cannot be a domain (the id is not a UUID, no vCPU, ...); nothing is defined then.
        A running domain gets the new spec at its next start."""
        ...

    def start_domain(self, domain_id: str) -> None:
        """Start the domain; nothing happens when it runs already. DomainNotFound if undefined."""
        ...

    def shutdown_domain(self, domain_id: str) -> None:
        """Ask the guest to power off (ACPI power button); returns at once. Nothing happens when
        the domain is not running; DomainNotFound if undefined."""
        ...

    def destroy_domain(self, domain_id: str) -> None:
        """Power the domain off at once (pull the plug); idempotent, also when it does not exist."""
        ...

    def reboot_domain(self, domain_id: str, *, hard: bool) -> None:
        """Soft: ask the guest (ACPI power button, the guest's power-off becomes a restart);
        hard: reset the virtual machine. DomainNotFound if undefined, VirtError if not running."""
        ...

    def undefine_domain(self, domain_id: str) -> None:
        """Destroy and remove the domain (with any managed save, snapshot metadata and NVRAM) and
        its console log; idempotent."""
        ...

    def power_state(self, domain_id: str) -> PowerState:
        """The domain's state now (MISSING when it does not exist)."""
        ...

    def domains(self) -> dict[str, PowerState]:
        """Every domain on the host by name, with its state (for the periodic resync)."""
        ...

    def console_log(self, domain_id: str, max_bytes: int = 64 * 1024) -> str:
        """The last ``max_bytes`` of the domain's serial console output ('' when there is none)."""
        ...

    def watch_events(self, callback: EventCallback) -> EventWatch:
        """Call ``callback`` on every power change of a domain of this host (started, paused, shut
        down, crashed, undefined...) until the watch is closed; a changed definition is no event.
        The watch has a connection of its own; HostUnreachable when it cannot be opened."""
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
