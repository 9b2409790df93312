"""An in-memory host, for scale simulation only (thousands of hosts without thousands of daemons).

``fake://<name>?cpus=..&memory_mib=..&disk_gib=..&arch=..&cpu_model=..&accelerator=..`` describes
the host entirely in its URI, so a scale test registers hosts exactly as an operator would register
real ones. Everything else is shared per host name, so every connection to a name sees the same
host: liveness (:func:`set_reachable`, a simulated outage makes every connection fail), volumes,
domains and event watches. :func:`crash` makes a guest die, as a real one might.

The fake behaves like the libvirt driver where callers can tell (same errors, same idempotence,
events delivered from another thread) but power changes happen at once: a shutdown is shut off
when the call returns. It is small per object: a host costs a few hundred bytes until it has
domains, a domain a few lines of console text, and volumes of equal content share their bytes.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, cast
from urllib.parse import parse_qs, urlsplit

from sovra.virt import domain_xml
from sovra.virt.driver import (
    STORAGE_POOL,
    STORAGE_POOL_PATH,
    Accelerator,
    DomainNotFound,
    DomainSpec,
    EventCallback,
    HostInventory,
    HostUnreachable,
    PowerState,
    UnsupportedURI,
    VirtError,
    VolumeInfo,
    VolumeNotFound,
)

log = logging.getLogger(__name__)

FAKE_LIBVIRT_VERSION = "0.0.0"
_DEFAULTS = {
    "cpus": "16",
    "memory_mib": "65536",
    "disk_gib": "1000",
    "arch": "x86_64",
    "cpu_model": "fake",
    "accelerator": "kvm",
}
_CONSOLE_LINES = 32
_OVERLAY_BACKING_FORMATS = frozenset({"qcow2", "raw"})
_ACTIVE = frozenset({PowerState.RUNNING, PowerState.PAUSED})


class _Blob:
    """Volume bytes, shared by every volume with the same content (10,000 hosts holding the same
    image hold it once) and freed with the last of them."""

    __slots__ = ("__weakref__", "data", "sha256")

    def __init__(self, data: bytes, sha256: str) -> None:
        self.data = data
        self.sha256 = sha256


_blobs: weakref.WeakValueDictionary[str, _Blob] = weakref.WeakValueDictionary()
_EMPTY = _Blob(b"", hashlib.sha256(b"").hexdigest())


def _blob(data: bytes) -> _Blob:
    digest = hashlib.sha256(data).hexdigest()
    with _lock:
        blob = _blobs.get(digest)
        if blob is None:
            blob = _blobs[digest] = _Blob(data, digest)
        return blob


@dataclass(slots=True)
class _Volume:
    blob: _Blob
    capacity: int
    backing: str | None = None


@dataclass(slots=True)
class _Domain:
    spec: DomainSpec
    state: PowerState = PowerState.SHUTOFF
    console: deque[str] = field(default_factory=lambda: deque(maxlen=_CONSOLE_LINES))


class _Host:
    """One fake host's state; every FakeDriver of that name shares it. Guarded by its own lock."""

    __slots__ = ("domains", "lock", "reachable", "volumes", "watches")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reachable = True
        self.volumes: dict[str, _Volume] = {}
        self.domains: dict[str, _Domain] = {}
        self.watches: list[FakeWatch] = []

    def emit(self, domain_id: str, state: PowerState) -> None:
        """Queue an event for every watch of this host (call with ``lock`` held, for order)."""
        for watch in self.watches:
            _dispatcher.put(watch, domain_id, state)


_lock = threading.Lock()
_hosts: dict[str, _Host] = {}


def _host(name: str) -> _Host:
    with _lock:
        host = _hosts.get(name)
        if host is None:
            host = _hosts[name] = _Host()
        return host


def set_reachable(name: str, reachable: bool) -> None:
    """Simulate an outage (or its end) of the fake host ``name`` for all its connections.

    An outage also loses every event watch of the host for good, as a dropped connection would."""
    host = _host(name)
    with host.lock:
        host.reachable = reachable
        if not reachable:
            for watch in host.watches:
                watch.lose()
            host.watches.clear()


def crash(host_name: str, domain_id: str) -> None:
    """Simulate the guest ``domain_id`` dying: it becomes CRASHED, with an event and a console line."""
    host = _host(host_name)
    with host.lock:
        domain = host.domains.get(domain_id)
        if domain is None:
            raise DomainNotFound(f"domain {domain_id} is not defined on fake://{host_name}")
        if domain.state not in _ACTIVE:
            raise VirtError(f"domain {domain_id} on fake://{host_name} is not running, it cannot crash")
        domain.console.append("Kernel panic - not syncing: simulated crash")
        domain.state = PowerState.CRASHED
        host.emit(domain_id, PowerState.CRASHED)


def parse_fake_uri(uri: str) -> HostInventory:
    """The inventory a ``fake://`` URI describes; UnsupportedURI when it is malformed."""
    parts = urlsplit(uri)
    name = parts.netloc
    if parts.scheme != "fake" or not name:
        raise UnsupportedURI(f"fake host URIs look like fake://<name>?cpus=..&memory_mib=..; got {uri!r}")
    query = {key: values[-1] for key, values in parse_qs(parts.query, strict_parsing=False).items()}
    unknown = set(query) - set(_DEFAULTS)
    if unknown:
        raise UnsupportedURI(f"unknown fake host parameter(s) {', '.join(sorted(unknown))} in {uri!r}")
    values = {**_DEFAULTS, **query}
    try:
        cpus, memory_mib, disk_gib = (int(values[k]) for k in ("cpus", "memory_mib", "disk_gib"))
    except ValueError as exc:
        raise UnsupportedURI(f"fake host sizes must be integers in {uri!r}") from exc
    if cpus <= 0 or memory_mib <= 0 or disk_gib < 0:
        raise UnsupportedURI(f"fake host sizes must be positive in {uri!r}")
    if values["accelerator"] not in ("kvm", "tcg"):
        raise UnsupportedURI(f"fake host accelerator must be kvm or tcg in {uri!r}")
    return HostInventory(
        hostname=name,
        arch=values["arch"],
        cpu_model=values["cpu_model"],
        cpus=cpus,
        memory_mib=memory_mib,
        disk_gib=disk_gib,
        accelerator=cast(Accelerator, values["accelerator"]),
        libvirt_version=FAKE_LIBVIRT_VERSION,
        hypervisor_version=FAKE_LIBVIRT_VERSION,
    )


class FakeDriver:
    """A :class:`~sovra.virt.driver.VirtDriver` whose host lives only in memory."""

    def __init__(self, uri: str, inventory: HostInventory) -> None:
        self._uri = uri
        self._inventory = inventory
        self._host = _host(inventory.hostname)
        self._closed = False

    @classmethod
    def open(cls, uri: str) -> FakeDriver:
        inventory = parse_fake_uri(uri)
        if not _host(inventory.hostname).reachable:
            raise HostUnreachable(uri, "simulated outage")
        return cls(uri, inventory)

    @property
    def uri(self) -> str:
        return self._uri

    def inventory(self) -> HostInventory:
        self._check()
        return self._inventory

    def alive(self) -> bool:
        return not self._closed and self._host.reachable

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"FakeDriver({self._uri!r})"

    def _check(self) -> _Host:
        """The host, when this connection to it works; HostUnreachable otherwise."""
        if not self.alive():
            raise HostUnreachable(self._uri, "connection closed" if self._closed else "simulated outage")
        return self._host

    # -- volumes ------------------------------------------------------------------------------------

    def _info(self, name: str, volume: _Volume) -> VolumeInfo:
        return VolumeInfo(
            name=name,
            path=f"{STORAGE_POOL_PATH}/{name}",
            capacity_bytes=volume.capacity,
            allocation_bytes=len(volume.blob.data),
        )

    def _require(self, host: _Host, name: str, role: str = "") -> _Volume:
        volume = host.volumes.get(name)
        if volume is None:
            raise VolumeNotFound(f"volume {name}{role} does not exist in pool {STORAGE_POOL} on {self._uri}")
        return volume

    def volume(self, name: str) -> VolumeInfo | None:
        _check_volume_name(name)
        host = self._check()
        with host.lock:
            volume = host.volumes.get(name)
            return None if volume is None else self._info(name, volume)

    def delete_volume(self, name: str) -> None:
        _check_volume_name(name)
        host = self._check()
        with host.lock:
            host.volumes.pop(name, None)

    def upload_volume(self, name: str, source: BinaryIO, size: int) -> VolumeInfo:
        _check_volume_name(name)
        if size < 0:
            raise ValueError(f"volume {name}: size must not be negative, got {size}")
        self.delete_volume(name)
        parts: list[bytes] = []
        received = 0
        while received < size:  # a read may return less than asked, as pipes and sockets do
            part = source.read(size - received)
            if not part:
                raise ValueError(f"volume {name}: the source ended after {received} of {size} bytes")
            parts.append(part)
            received += len(part)
        data = b"".join(parts)
        if source.read(1):
            raise ValueError(f"volume {name}: the source holds more than the {size} bytes announced")
        host = self._check()
        volume = _Volume(_blob(data), capacity=size)
        with host.lock:
            host.volumes[name] = volume
            return self._info(name, volume)

    def volume_sha256(self, name: str) -> str:
        _check_volume_name(name)
        host = self._check()
        with host.lock:
            return self._require(host, name).blob.sha256

    def download_volume(self, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        _check_volume_name(name)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        host = self._check()
        with host.lock:
            data = self._require(host, name).blob.data
        return self._chunks(data, chunk_size)

    def _chunks(self, data: bytes, chunk_size: int) -> Iterator[bytes]:
        """A host that goes away mid-stream fails the stream, as a real one would."""
        for offset in range(0, len(data), chunk_size):
            self._check()
            yield data[offset : offset + chunk_size]

    def create_overlay(self, name: str, backing: str, backing_format: str, capacity_bytes: int) -> VolumeInfo:
        _check_volume_name(name)
        _check_volume_name(backing)
        if backing_format not in _OVERLAY_BACKING_FORMATS:
            raise ValueError(
                f"overlay {name}: backing format must be one of {sorted(_OVERLAY_BACKING_FORMATS)}, "
                f"got {backing_format!r}"
            )
        host = self._check()
        with host.lock:
            existing = host.volumes.get(name)
            if existing is not None:
                return self._info(name, existing)
            base = self._require(host, backing, f" (the backing of overlay {name})")
            if capacity_bytes < base.capacity:
                raise ValueError(
                    f"overlay {name}: capacity {capacity_bytes} bytes is smaller than the "
                    f"{base.capacity} bytes of its backing volume {backing}"
                )
            volume = host.volumes[name] = _Volume(_EMPTY, capacity_bytes, backing=backing)
            return self._info(name, volume)

    def resize_volume(self, name: str, capacity_bytes: int) -> None:
        _check_volume_name(name)
        host = self._check()
        with host.lock:
            volume = self._require(host, name)
            if capacity_bytes < volume.capacity:
                raise ValueError(
                    f"volume {name}: volumes only grow; {capacity_bytes} bytes is less than its "
                    f"{volume.capacity} bytes"
                )
            volume.capacity = capacity_bytes

    def flatten_volume(self, source: str, target: str) -> VolumeInfo:
        """The copy holds the bytes at the bottom of the chain (a fake guest writes nothing)."""
        _check_volume_name(source)
        _check_volume_name(target)
        if source == target:
            raise ValueError(f"flatten: the target must differ from the source volume {source}")
        host = self._check()
        with host.lock:
            volume = self._require(host, source, " (the source to flatten)")
            bottom = volume
            while bottom.backing is not None and bottom.backing in host.volumes:
                bottom = host.volumes[bottom.backing]
            copy = host.volumes[target] = _Volume(bottom.blob, volume.capacity)
            return self._info(target, copy)

    # -- domains ------------------------------------------------------------------------------------

    def _domain(self, host: _Host, domain_id: str) -> _Domain:
        domain = host.domains.get(domain_id)
        if domain is None:
            raise DomainNotFound(f"domain {domain_id} is not defined on {self._uri}")
        return domain

    @staticmethod
    def _transition(host: _Host, domain_id: str, domain: _Domain, state: PowerState) -> None:
        domain.state = state
        host.emit(domain_id, state)

    def define_domain(self, spec: DomainSpec) -> None:
        domain_xml.validate(spec)
        host = self._check()
        with host.lock:
            domain = host.domains.get(spec.id)
            if domain is None:
                host.domains[spec.id] = _Domain(spec)
            else:
                domain.spec = spec

    def start_domain(self, domain_id: str) -> None:
        host = self._check()
        with host.lock:
            domain = self._domain(host, domain_id)
            if domain.state in _ACTIVE:
                return
            for volume in (domain.spec.root_volume, domain.spec.seed_volume):
                if volume is not None and volume not in host.volumes:
                    raise VolumeNotFound(
                        f"domain {domain_id} on {self._uri}: its volume {volume} does not exist"
                    )
            domain.console.extend(_boot_lines(domain_id))
            self._transition(host, domain_id, domain, PowerState.RUNNING)

    def shutdown_domain(self, domain_id: str) -> None:
        host = self._check()
        with host.lock:
            domain = self._domain(host, domain_id)
            if domain.state in _ACTIVE:
                domain.console.append("sovra-init: power button pressed, powering off")
                self._transition(host, domain_id, domain, PowerState.SHUTOFF)

    def destroy_domain(self, domain_id: str) -> None:
        host = self._check()
        with host.lock:
            domain = host.domains.get(domain_id)
            if domain is not None and domain.state in _ACTIVE:
                self._transition(host, domain_id, domain, PowerState.SHUTOFF)

    def reboot_domain(self, domain_id: str, *, hard: bool) -> None:
        host = self._check()
        with host.lock:
            domain = self._domain(host, domain_id)
            if domain.state not in _ACTIVE:
                raise VirtError(f"domain {domain_id} on {self._uri}: domain is not running")
            if not hard:
                domain.console.append("sovra-init: power button pressed, powering off")
            domain.console.extend(_boot_lines(domain_id))

    def undefine_domain(self, domain_id: str) -> None:
        host = self._check()
        with host.lock:
            if host.domains.pop(domain_id, None) is not None:
                host.emit(domain_id, PowerState.MISSING)

    def power_state(self, domain_id: str) -> PowerState:
        host = self._check()
        with host.lock:
            domain = host.domains.get(domain_id)
            return PowerState.MISSING if domain is None else domain.state

    def domains(self) -> dict[str, PowerState]:
        host = self._check()
        with host.lock:
            return {domain_id: domain.state for domain_id, domain in host.domains.items()}

    def console_log(self, domain_id: str, max_bytes: int = 64 * 1024) -> str:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        host = self._check()
        with host.lock:
            domain = host.domains.get(domain_id)
            text = "" if domain is None else "".join(f"{line}\n" for line in domain.console)
        if max_bytes == 0:
            return ""
        return text.encode()[-max_bytes:].decode("utf-8", errors="replace")

    def watch_events(self, callback: EventCallback) -> FakeWatch:
        host = self._check()
        watch = FakeWatch(host, callback)
        with host.lock:
            host.watches.append(watch)
        return watch


def _boot_lines(domain_id: str) -> tuple[str, ...]:
    return ("SeaBIOS (version fake)", f"Sovra fake guest {domain_id}", "fake login: ")


def _check_volume_name(name: str) -> None:
    """The libvirt driver's rule, so that a name the fake accepts works on a real host."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name.encode()) > 255:
        raise ValueError(f"volume name {name!r} must be a file name: not empty, no '/', at most 255 bytes")


class FakeWatch:
    """A fake host's lifecycle events, delivered like libvirt's: later, from another thread."""

    def __init__(self, host: _Host, callback: EventCallback) -> None:
        self._host = host
        self._callback = callback
        self._closed = False
        self._lost = False

    def alive(self) -> bool:
        return not (self._closed or self._lost)

    def close(self) -> None:
        self._closed = True
        with self._host.lock:
            if self in self._host.watches:
                self._host.watches.remove(self)

    def lose(self) -> None:
        """The connection dropped (a simulated outage): no more events, ever."""
        self._lost = True

    def deliver(self, domain_id: str, state: PowerState) -> None:
        if self.alive():
            self._callback(domain_id, state)


class _Dispatcher:
    """One thread delivers the events of every fake host (10,000 hosts need not mean 10,000
    threads); it starts with the first event."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[FakeWatch, str, PowerState]] = queue.SimpleQueue()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, watch: FakeWatch, domain_id: str, state: PowerState) -> None:
        self._queue.put((watch, domain_id, state))
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fake-virt-events", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            watch, domain_id, state = self._queue.get()
            try:
                watch.deliver(domain_id, state)
            except Exception:  # like libvirt: a failing callback does not stop the events
                log.exception("fake event %s of domain %s not delivered", state, domain_id)


_dispatcher = _Dispatcher()
