"""The libvirt driver: a host's inventory, volumes, domains and lifecycle events over any libvirt URI.

Libvirt behaviours that shape this module (more in docs/virt-notes.md):

* ``libvirt.open`` can block for minutes on an unreachable remote (ssh waiting for a banner, a TCP
  connect to a black hole). We open in a daemon thread and give up after a timeout; a connection
  that arrives late is closed by that thread.
* A connection to a host that died stays "open" until a call times out at the TCP level, unless
  keepalive is on, and keepalive (like event delivery) needs libvirt's event loop, which must be
  registered *before* the connection is opened. So the first open of the process registers the
  default event loop and starts one daemon thread that runs it; every connection gets keepalive.
* ``/dev/kvm`` existing does not mean KVM works: on nested or paravirtual hosts the device is there
  but guests crash. We only report ``kvm`` when the host CPU advertises vmx/svm *and* libvirt's
  domain capabilities accept kvm; anything else runs under TCG.
* Everything goes through libvirt's storage pool API (upload, download, overlays, copies), never
  through the local file system, so the same code drives a remote host. Even the console log: it is
  written into the pool's directory and read back as a volume.
* A running QEMU locks its images: ``qemu-img`` (libvirt's volume copy) cannot read a disk in use,
  paused or not, so a running domain's disk is copied by the domain itself (a push backup).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

import libvirt

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
    VirtError,
    VolumeInfo,
    VolumeNotFound,
    redact_uri,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Hardware virtualisation CPU flags (Intel VT-x, AMD-V) as libvirt names them.
_HW_VIRT_FEATURES = frozenset({"vmx", "svm"})
#: Keepalive (interval seconds, missed answers): a dead host is noticed after about 20 s.
KEEPALIVE = (5, 3)
_CHUNK = 1 << 20
_JOB_POLL_SECONDS = 0.05
_OVERLAY_BACKING_FORMATS = frozenset({"qcow2", "raw"})

#: Errors that say the connection, not the request, failed.
_CONNECTION_ERROR_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})
_CONNECTION_ERROR_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_CANCELLED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    }
)

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.UNKNOWN,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.UNKNOWN,
}
#: The shut-off reason that means the guest died rather than stopped: ``on_crash=destroy`` leaves a
#: crashed guest, and a killed emulator, shut off "crashed". (Shut off "failed" is a start that
#: failed: the guest never ran.)
_DIED = frozenset({libvirt.VIR_DOMAIN_SHUTOFF_CRASHED})
_EVENT_STATES = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: PowerState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_EVENT_STOPPED: PowerState.SHUTOFF,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: PowerState.UNKNOWN,
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: PowerState.MISSING,
}
#: Stop events of a guest that died: it crashed, or its emulator failed (was killed, aborted).
_STOPPED_DIED = frozenset({libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED})
_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)


def _ignore_libvirt_error(_ctx: object, _error: object) -> None:
    """libvirt's default handler prints every error to stderr; we raise them as exceptions instead."""


libvirt.registerErrorHandler(_ignore_libvirt_error, None)


# -- connections ------------------------------------------------------------------------------------


def _with_timeout(uri: str, timeout: float, call: Callable[[], T], cleanup: Callable[[T], None]) -> T:
    """Run ``call`` in a daemon thread; raise HostUnreachable if it takes longer than ``timeout``.

    A daemon thread (not an executor) so that a hung call never blocks interpreter exit. If the call
    completes after we gave up, ``cleanup`` disposes of its result.
    """
    result: list[T] = []
    error: list[BaseException] = []
    lock = threading.Lock()
    abandoned = False

    def run() -> None:
        try:
            value = call()
        except BaseException as exc:
            error.append(exc)
            return
        with lock:
            if not abandoned:
                result.append(value)
                return
        with contextlib.suppress(libvirt.libvirtError):
            cleanup(value)

    thread = threading.Thread(target=run, name=f"libvirt {redact_uri(uri)}", daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        if not result and not error:
            abandoned = True
            raise HostUnreachable(uri, f"no answer within {timeout:g} s")
    if error:
        exc = error[0]
        if isinstance(exc, libvirt.libvirtError):
            raise HostUnreachable(uri, _reason(exc)) from exc
        raise exc
    return result[0]


_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once per process.

    Must happen before a connection is opened: a connection only uses the event loop (for
    keepalive and for delivering events) if one was registered when it was made.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _run_event_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            log.exception("libvirt event loop iteration failed")
            time.sleep(0.1)


def _open_connection(uri: str, timeout: float, keepalive: tuple[int, int]) -> Any:
    """A read-write connection with keepalive; HostUnreachable on error or after ``timeout``."""
    _ensure_event_loop()
    conn = _with_timeout(uri, timeout, lambda: libvirt.open(uri), lambda c: c.close())
    try:
        conn.setKeepAlive(*keepalive)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:  # in-process drivers (test:///)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise HostUnreachable(uri, _reason(exc)) from exc
    return conn


def _reason(exc: libvirt.libvirtError) -> str:
    message = exc.get_error_message() or str(exc)
    return message.strip()


def _is_connection_error(exc: libvirt.libvirtError) -> bool:
    return exc.get_error_domain() in _CONNECTION_ERROR_DOMAINS or _code(exc) in _CONNECTION_ERROR_CODES


def _code(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code())


def _version(number: int) -> str:
    """libvirt encodes versions as major * 1_000_000 + minor * 1_000 + release."""
    return f"{number // 1_000_000}.{number // 1_000 % 1_000}.{number % 1_000}"


# -- states -----------------------------------------------------------------------------------------


def power_state_of(state: int, reason: int) -> PowerState:
    """Our power state for libvirt's (state, reason) pair."""
    if state == libvirt.VIR_DOMAIN_SHUTOFF and reason in _DIED:
        return PowerState.CRASHED
    return _STATES.get(state, PowerState.UNKNOWN)


def event_power_state(event: int, detail: int) -> PowerState | None:
    """The power state a lifecycle event reports; None for DEFINED, which changes no power state
    (and asking the domain then would catch a starting domain in its brief paused phase)."""
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED and detail in _STOPPED_DIED:
        return PowerState.CRASHED
    return _EVENT_STATES.get(event)


# -- XML for the storage pool and its volumes ---------------------------------------------------------


def _pool_xml() -> str:
    pool = ET.Element("pool", type="dir")
    ET.SubElement(pool, "name").text = STORAGE_POOL
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = STORAGE_POOL_PATH
    return ET.tostring(pool, encoding="unicode")


def _volume_xml(name: str, capacity: int, fmt: str, backing: tuple[str, str] | None = None) -> str:
    """A sparse volume (allocation 0); qcow2 as version 3 (libvirt's default is still v2).
    ``backing`` is the (path, format) of a backing file."""
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(volume, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(volume, "target")
    ET.SubElement(target, "format", type=fmt)
    if fmt == "qcow2":
        ET.SubElement(target, "compat").text = "1.1"
    if backing is not None:
        store = ET.SubElement(volume, "backingStore")
        ET.SubElement(store, "path").text = backing[0]
        ET.SubElement(store, "format", type=backing[1])
    return ET.tostring(volume, encoding="unicode")


def _check_volume_name(name: str) -> None:
    """Volume names become file names in the pool's directory."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name.encode()) > 255:
        raise ValueError(f"volume name {name!r} must be a file name: not empty, no '/', at most 255 bytes")


class LibvirtDriver:
    """A :class:`~sovra.virt.driver.VirtDriver` over one libvirt connection (thread-safe: libvirt
    connections are; streams are made per call and never shared)."""

    def __init__(
        self, uri: str, conn: Any, *, timeout: float, keepalive: tuple[int, int] = KEEPALIVE
    ) -> None:
        self._uri = uri
        self._conn: Any = conn
        self._timeout = timeout
        self._keepalive = keepalive
        self._pool_lock = threading.Lock()
        self._pool_cache: Any | None = None

    @classmethod
    def open(cls, uri: str, *, timeout: float = 10, keepalive: tuple[int, int] = KEEPALIVE) -> LibvirtDriver:
        """Connect to ``uri`` read-write; HostUnreachable on error or after ``timeout`` seconds.
        ``keepalive`` is (interval seconds, missed answers) before a silent host counts as dead."""
        return cls(uri, _open_connection(uri, timeout, keepalive), timeout=timeout, keepalive=keepalive)

    @property
    def uri(self) -> str:
        return self._uri

    # -- inventory and liveness -----------------------------------------------------------------

    def inventory(self) -> HostInventory:
        conn = self._connection()
        try:
            return self._inventory(conn)
        except libvirt.libvirtError as exc:
            raise HostUnreachable(self._uri, _reason(exc)) from exc

    def _inventory(self, conn: Any) -> HostInventory:
        info = conn.getInfo()  # [arch, memory MiB, cpus, MHz, nodes, sockets, cores, threads]
        caps = ET.fromstring(conn.getCapabilities())
        cpu = caps.find("host/cpu")
        arch = (cpu.findtext("arch") if cpu is not None else None) or str(info[0])
        cpu_model = (cpu.findtext("model") if cpu is not None else None) or str(info[0])
        features = {f.get("name", "") for f in cpu.iter("feature")} if cpu is not None else set()
        return HostInventory(
            hostname=conn.getHostname(),
            arch=arch,
            cpu_model=cpu_model,
            cpus=int(info[2]),
            memory_mib=self._memory_mib(conn, default=int(info[1])),
            disk_gib=self._default_pool_gib(conn),
            accelerator=self._accelerator(conn, arch, features),
            libvirt_version=_version(conn.getLibVersion()),
            hypervisor_version=_version(conn.getVersion()),
        )

    @staticmethod
    def _memory_mib(conn: Any, *, default: int) -> int:
        """Total RAM from the host's /proc/meminfo, through libvirt.

        ``getInfo()`` sums the NUMA cells' memory, which misses RAM that belongs to no node (seen
        on this project's own machine: 8.3 GiB in node0 of 24 GiB). The node memory stats read
        /proc/meminfo. Drivers without them (test:///) fall back to ``getInfo()``.
        """
        try:
            stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            return default
        total_kib = int(stats.get("total", 0))
        return total_kib // 1024 if total_kib else default

    @staticmethod
    def _default_pool_gib(conn: Any) -> int:
        """Capacity of the ``default`` storage pool, where server disks go; 0 when there is none."""
        try:
            pool = conn.storagePoolLookupByName(STORAGE_POOL)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_SUPPORT):
                return 0
            raise
        capacity_bytes = int(pool.info()[1])  # [state, capacity, allocation, available]
        return capacity_bytes // 2**30

    @staticmethod
    def _accelerator(conn: Any, arch: str, cpu_features: set[str]) -> Accelerator:
        if not cpu_features & _HW_VIRT_FEATURES:
            return "tcg"
        try:
            domcaps = ET.fromstring(conn.getDomainCapabilities(None, arch, None, "kvm"))
        except libvirt.libvirtError:
            return "tcg"  # libvirt refuses kvm for this arch (no /dev/kvm, no emulator, ...)
        return "kvm" if domcaps.findtext("domain") == "kvm" else "tcg"

    def alive(self) -> bool:
        """Whether the connection is open and answers a trivial call within the timeout."""
        conn = self._conn
        if conn is None:
            return False
        try:
            if conn.isAlive() != 1:
                return False
            _with_timeout(self._uri, self._timeout, conn.getLibVersion, lambda _v: None)
        except (libvirt.libvirtError, HostUnreachable):
            return False
        return True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(libvirt.libvirtError):  # already gone: nothing to release
            conn.close()

    def __repr__(self) -> str:
        return f"LibvirtDriver({redact_uri(self._uri)!r})"

    # -- errors -----------------------------------------------------------------------------------

    def _connection(self) -> Any:
        conn = self._conn
        if conn is None:
            raise HostUnreachable(self._uri, "connection closed")
        return conn

    @contextlib.contextmanager
    def _errors(self, subject: str) -> Iterator[None]:
        """Turn libvirt errors into ours; ``subject`` ("domain X", "volume Y") leads the message."""
        try:
            yield
        except libvirt.libvirtError as exc:
            raise self._translate(exc, subject) from exc

    def _translate(self, exc: libvirt.libvirtError, subject: str) -> Exception:
        if _is_connection_error(exc):
            return HostUnreachable(self._uri, _reason(exc))
        message = f"{subject} on {redact_uri(self._uri)}: {_reason(exc)}"
        if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return DomainNotFound(message)
        if _code(exc) == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return VolumeNotFound(message)
        return VirtError(message)

    # -- the storage pool -------------------------------------------------------------------------

    def _pool(self) -> Any:
        """The active ``default`` pool (defined, built, autostarted and started when missing)."""
        with self._pool_lock:
            if self._pool_cache is None:
                with self._errors(f"storage pool {STORAGE_POOL}"):
                    self._pool_cache = self._ensure_pool(self._connection())
            return self._pool_cache

    @staticmethod
    def _ensure_pool(conn: Any) -> Any:
        try:
            pool = conn.storagePoolLookupByName(STORAGE_POOL)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            pool = _define_pool(conn)
        if not pool.isActive():
            try:
                pool.create(0)
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_OPERATION_INVALID:  # started meanwhile by another
                    raise
        return pool

    def _refresh_pool(self) -> None:
        """Make files that appeared behind libvirt's back visible as volumes (console logs that
        virtlogd rotated, the log of a domain that was defined by someone else).

        Best effort: libvirt refuses a refresh while a volume is being built in the pool; the
        lookup that follows is what decides."""
        try:
            self._pool().refresh(0)
        except libvirt.libvirtError as exc:
            if _is_connection_error(exc):
                raise HostUnreachable(self._uri, _reason(exc)) from exc
            log.debug("refresh of pool %s on %s failed: %s", STORAGE_POOL, redact_uri(self._uri), exc)

    # -- volumes ----------------------------------------------------------------------------------

    def _lookup_volume(self, name: str) -> Any | None:
        try:
            return self._pool().storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise self._translate(exc, f"volume {name}") from exc

    def _require_volume(self, name: str, role: str = "") -> Any:
        vol = self._lookup_volume(name)
        if vol is None:
            raise VolumeNotFound(
                f"volume {name}{role} does not exist in pool {STORAGE_POOL} on {redact_uri(self._uri)}"
            )
        return vol

    def _volume_info(self, vol: Any) -> VolumeInfo:
        with self._errors(f"volume {vol.name()}"):
            _type, capacity, allocation = vol.info()
            path = vol.path()
        return VolumeInfo(
            name=vol.name(), path=path, capacity_bytes=int(capacity), allocation_bytes=int(allocation)
        )

    def volume(self, name: str) -> VolumeInfo | None:
        _check_volume_name(name)
        vol = self._lookup_volume(name)
        return None if vol is None else self._volume_info(vol)

    def delete_volume(self, name: str) -> None:
        _check_volume_name(name)
        vol = self._lookup_volume(name)
        if vol is None:
            return
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:  # deleted meanwhile by another
                raise self._translate(exc, f"volume {name}") from exc

    def upload_volume(self, name: str, source: BinaryIO, size: int) -> VolumeInfo:
        _check_volume_name(name)
        if size < 0:
            raise ValueError(f"volume {name}: size must not be negative, got {size}")
        self.delete_volume(name)
        with self._errors(f"volume {name}"):
            vol = self._pool().createXML(_volume_xml(name, size, "raw"), 0)
        try:
            if size:
                self._upload(vol, name, source, size)
            return self._volume_info(vol)
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)
            raise

    def _upload(self, vol: Any, name: str, source: BinaryIO, size: int) -> None:
        subject = f"volume {name}"
        stream = self._stream(subject, lambda s: vol.upload(s, 0, size, 0))
        try:
            sent = 0
            while sent < size:
                data = source.read(min(_CHUNK, size - sent))
                if not data:
                    raise ValueError(f"{subject}: the source ended after {sent} of {size} bytes")
                with self._errors(subject):
                    _send_all(stream, data)
                sent += len(data)
            if source.read(1):
                raise ValueError(f"{subject}: the source holds more than the {size} bytes announced")
            with self._errors(subject):
                stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise

    def download_volume(self, name: str, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        _check_volume_name(name)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        vol = self._require_volume(name)
        return self._download(vol, f"volume {name}", 0, 0, chunk_size)

    def _download(self, vol: Any, subject: str, offset: int, length: int, chunk_size: int) -> Iterator[bytes]:
        """Open a download stream now (errors surface here) and return its chunks as an iterator."""
        stream = self._stream(subject, lambda s: vol.download(s, offset, length, 0))
        return self._chunks(stream, subject, chunk_size)

    def _stream(self, subject: str, start: Callable[[Any], object]) -> Any:
        """A new stream with a transfer started on it by ``start(stream)``; aborted if that fails."""
        with self._errors(subject):
            stream = self._connection().newStream(0)
            try:
                start(stream)
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
        return stream

    def _chunks(self, stream: Any, subject: str, chunk_size: int) -> Iterator[bytes]:
        finished = False
        try:
            while True:
                with self._errors(subject):
                    data = stream.recv(chunk_size)
                if not data:
                    break
                yield data
            with self._errors(subject):
                stream.finish()
            finished = True
        finally:
            if not finished:  # an error, or the consumer stopped early
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()

    def volume_sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        for chunk in self.download_volume(name):
            digest.update(chunk)
        return digest.hexdigest()

    def create_overlay(self, name: str, backing: str, backing_format: str, capacity_bytes: int) -> VolumeInfo:
        _check_volume_name(name)
        _check_volume_name(backing)
        if backing_format not in _OVERLAY_BACKING_FORMATS:
            raise ValueError(
                f"overlay {name}: backing format must be one of {sorted(_OVERLAY_BACKING_FORMATS)}, "
                f"got {backing_format!r}"
            )
        existing = self._lookup_volume(name)
        if existing is not None:
            return self._volume_info(existing)
        base = self._volume_info(self._require_volume(backing, f" (the backing of overlay {name})"))
        if capacity_bytes < base.capacity_bytes:
            raise ValueError(
                f"overlay {name}: capacity {capacity_bytes} bytes is smaller than the "
                f"{base.capacity_bytes} bytes of its backing volume {backing}"
            )
        xml = _volume_xml(name, capacity_bytes, "qcow2", backing=(base.path, backing_format))
        return self._volume_info(self._create_once(name, xml, f"overlay {name}"))

    def _create_once(self, name: str, xml: str, subject: str) -> Any:
        """Create the volume ``name``, or take the one a parallel caller made meanwhile."""
        try:
            return self._pool().createXML(xml, 0)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_STORAGE_VOL_EXIST:
                raise self._translate(exc, subject) from exc
        return self._require_volume(name)

    def resize_volume(self, name: str, capacity_bytes: int) -> None:
        _check_volume_name(name)
        vol = self._require_volume(name)
        current = self._volume_info(vol).capacity_bytes
        if capacity_bytes < current:
            raise ValueError(
                f"volume {name}: volumes only grow; {capacity_bytes} bytes is less than its {current} bytes"
            )
        if capacity_bytes == current:
            return
        with self._errors(f"volume {name}"):
            user = self._active_domain_using(vol)
            if user is None:
                vol.resize(capacity_bytes, 0)
            else:  # qemu-img cannot open an image a running QEMU holds: the domain grows it
                dom, device = user
                dom.blockResize(device, capacity_bytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    def flatten_volume(self, source: str, target: str) -> VolumeInfo:
        _check_volume_name(source)
        _check_volume_name(target)
        if source == target:
            raise ValueError(f"flatten: the target must differ from the source volume {source}")
        src = self._require_volume(source, " (the source to flatten)")
        capacity = self._volume_info(src).capacity_bytes
        self.delete_volume(target)
        subject = f"volume {target} (a flattened copy of {source})"
        with self._errors(subject):
            user = self._active_domain_using(src)
            if user is None:
                # libvirt runs qemu-img convert, which reads the whole backing chain into one file.
                vol = self._pool().createXMLFrom(_volume_xml(target, capacity, "qcow2"), src, 0)
                return self._volume_info(vol)
            vol = self._pool().createXML(_volume_xml(target, capacity, "qcow2"), 0)
        try:
            with self._errors(subject):
                self._backup(*user, vol.path(), subject)
            return self._volume_info(vol)
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)
            raise

    def _backup(self, dom: Any, device: str, target_path: str, subject: str) -> None:
        """Copy the running domain's disk ``device`` into ``target_path`` (a push backup: a
        point-in-time image of the whole chain, taken while the guest runs) and wait for it."""
        xml = domain_xml.backup_xml(dom.XMLDesc(0), device, target_path)
        dom.backupBegin(xml, None, libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL)
        while dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
            time.sleep(_JOB_POLL_SECONDS)
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        if stats.get("type") != libvirt.VIR_DOMAIN_JOB_COMPLETED:
            raise VirtError(f"{subject}: the backup job failed: {stats.get('errmsg', 'no reason given')}")

    def _active_domain_using(self, vol: Any) -> tuple[Any, str] | None:
        """The running or paused domain whose disk is ``vol``, with the disk's target device."""
        name, path = vol.name(), vol.path()
        for dom in self._connection().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                device = domain_xml.disk_target(dom.XMLDesc(0), name, path)
            except libvirt.libvirtError as exc:
                if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:  # gone since the listing
                    continue
                raise
            if device is not None:
                return dom, device
        return None

    # -- domains ----------------------------------------------------------------------------------

    def _lookup_domain(self, domain_id: str) -> Any | None:
        try:
            return self._connection().lookupByName(domain_id)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._translate(exc, f"domain {domain_id}") from exc

    def _require_domain(self, domain_id: str) -> Any:
        dom = self._lookup_domain(domain_id)
        if dom is None:
            raise DomainNotFound(f"domain {domain_id} is not defined on {redact_uri(self._uri)}")
        return dom

    def define_domain(self, spec: DomainSpec) -> None:
        domain_xml.validate(spec)
        log_path = self._console_log(spec.id)
        with self._errors(f"domain {spec.id}"):
            self._connection().defineXML(domain_xml.render(spec, log_path))

    def _console_log(self, domain_id: str) -> str:
        """Create the (empty) console log volume, so the pool knows the file before virtlogd
        appends to it (no refresh needed to read it); returns its path on the host."""
        name = domain_xml.console_log_volume(domain_id)
        subject = f"console log of domain {domain_id}"
        vol = self._lookup_volume(name) or self._create_once(name, _volume_xml(name, 0, "raw"), subject)
        with self._errors(subject):
            return str(vol.path())

    def start_domain(self, domain_id: str) -> None:
        dom = self._require_domain(domain_id)
        with self._errors(f"domain {domain_id}"), _unless_state_reached(lambda: dom.isActive() == 1):
            if not dom.isActive():
                dom.create()

    def shutdown_domain(self, domain_id: str) -> None:
        dom = self._require_domain(domain_id)
        with self._errors(f"domain {domain_id}"), _unless_state_reached(lambda: dom.isActive() == 0):
            if dom.isActive():
                dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

    def destroy_domain(self, domain_id: str) -> None:
        dom = self._lookup_domain(domain_id)
        if dom is None:
            return
        try:
            with _unless_state_reached(lambda: dom.isActive() == 0):
                dom.destroy()
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:  # undefined meanwhile (a transient domain)
                raise self._translate(exc, f"domain {domain_id}") from exc

    def reboot_domain(self, domain_id: str, *, hard: bool) -> None:
        dom = self._require_domain(domain_id)
        with self._errors(f"domain {domain_id}"):
            if hard:
                dom.reset(0)
            else:  # the guest powers off; libvirt turns that into a restart ("fake reboot")
                dom.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)

    def undefine_domain(self, domain_id: str) -> None:
        dom = self._lookup_domain(domain_id)
        if dom is not None:
            self.destroy_domain(domain_id)
            try:
                dom.undefineFlags(_UNDEFINE_FLAGS)
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:  # undefined meanwhile by another
                    raise self._translate(exc, f"domain {domain_id}") from exc
        self._delete_console_logs(domain_id)

    def _delete_console_logs(self, domain_id: str) -> None:
        """The console log and the copies virtlogd rotated out (``<log>.0``, ``<log>.1``, ...)."""
        current = domain_xml.console_log_volume(domain_id)
        self._refresh_pool()
        with self._errors(f"console log of domain {domain_id}"):
            names = self._pool().listVolumes()
        for name in names:
            if name == current or (name.startswith(f"{current}.") and name[len(current) + 1 :].isdigit()):
                self.delete_volume(name)

    def power_state(self, domain_id: str) -> PowerState:
        dom = self._lookup_domain(domain_id)
        if dom is None:
            return PowerState.MISSING
        try:
            state, reason = dom.state()
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return PowerState.MISSING
            raise self._translate(exc, f"domain {domain_id}") from exc
        return power_state_of(state, reason)

    def domains(self) -> dict[str, PowerState]:
        with self._errors("domain list"):
            records = self._connection().getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
            return {
                dom.name(): power_state_of(stats.get("state.state", -1), stats.get("state.reason", 0))
                for dom, stats in records
            }

    def console_log(self, domain_id: str, max_bytes: int = 64 * 1024) -> str:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        name = domain_xml.console_log_volume(domain_id)
        vol = self._lookup_volume(name)
        if vol is None:  # a domain defined elsewhere: its log is unknown to the pool until a refresh
            self._refresh_pool()
            vol = self._lookup_volume(name)
        if vol is None or max_bytes == 0:
            return ""
        subject = f"console log of domain {domain_id}"
        with self._errors(subject):
            # The file's length. Not the capacity: libvirt probes the file's format, and the guest
            # writes the file (a log starting with a qcow2 header would report its virtual size).
            size = int(vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2])
        offset = max(0, size - max_bytes)
        if size == offset:
            return ""
        chunks = self._download(vol, subject, offset, size - offset, _CHUNK)
        return b"".join(chunks).decode("utf-8", errors="replace").replace("\r\n", "\n")

    # -- events -----------------------------------------------------------------------------------

    def watch_events(self, callback: EventCallback) -> LifecycleWatch:
        """A dedicated connection (with keepalive) that calls ``callback`` on every lifecycle event."""
        self._connection()  # a closed driver watches nothing, like it does nothing else
        conn = _open_connection(self._uri, self._timeout, self._keepalive)
        try:
            return LifecycleWatch(self._uri, conn, callback)
        except libvirt.libvirtError as exc:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise HostUnreachable(self._uri, _reason(exc)) from exc


def _define_pool(conn: Any) -> Any:
    """Define, build (mkdir), autostart and return the ``default`` directory pool."""
    try:
        pool = conn.storagePoolDefineXML(_pool_xml(), 0)
    except libvirt.libvirtError:
        # Another client may have defined it since our lookup; if not, the first error stands.
        with contextlib.suppress(libvirt.libvirtError):
            return conn.storagePoolLookupByName(STORAGE_POOL)
        raise
    pool.build(0)  # mkdir; the (NO_)OVERWRITE flags only matter to file-system pools
    pool.setAutostart(1)
    return pool


@contextlib.contextmanager
def _unless_state_reached(reached: Callable[[], bool]) -> Iterator[None]:
    """Swallow libvirt's "operation invalid" when the domain got where we wanted anyway (a domain
    that stopped, or was started by another client, between our check and our request)."""
    try:
        yield
    except libvirt.libvirtError as exc:
        if _code(exc) != libvirt.VIR_ERR_OPERATION_INVALID or not reached():
            raise


def _send_all(stream: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = stream.send(bytes(view))
        view = view[sent:]


class LifecycleWatch:
    """Delivers a connection's domain lifecycle events to a callback, until closed.

    libvirt calls us on its single event-loop thread, which also answers keepalives for every
    connection of the process; a callback that blocks there (a database write waiting for a lock)
    would make healthy hosts look dead. So events are queued and this watch's own thread calls the
    callback, in order.
    """

    def __init__(self, uri: str, conn: Any, callback: EventCallback) -> None:
        self._uri = uri
        self._conn = conn
        self._callback = callback
        self._closed = threading.Event()
        self._closing = threading.Lock()
        self._lost = threading.Event()
        self._events: queue.SimpleQueue[tuple[str, PowerState] | None] = queue.SimpleQueue()
        self._callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
        )
        conn.registerCloseCallback(self._on_close, None)
        self._thread = threading.Thread(target=self._deliver, name=f"events {redact_uri(uri)}", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        if self._closed.is_set() or self._lost.is_set():
            return False
        try:
            return bool(self._conn.isAlive() == 1)
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        with self._closing:
            if self._closed.is_set():
                return
            self._closed.set()
        self._events.put(None)
        for release in (
            lambda: self._conn.domainEventDeregisterAny(self._callback_id),
            self._conn.unregisterCloseCallback,
            self._conn.close,
        ):
            with contextlib.suppress(libvirt.libvirtError):  # a lost connection has nothing to release
                release()

    def _on_event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: object) -> None:
        """On libvirt's event thread: only queue."""
        state = event_power_state(event, detail)
        if state is not None:
            self._events.put((dom.name(), state))

    def _on_close(self, _conn: Any, reason: int, _opaque: object) -> None:
        log.warning("event connection to %s lost (reason %d)", redact_uri(self._uri), reason)
        self._lost.set()

    def _deliver(self) -> None:
        while (item := self._events.get()) is not None:
            if self._closed.is_set():
                return
            name, state = item
            try:
                self._callback(name, state)
            except Exception:  # one failing callback must not end the watch
                log.exception("event %s of domain %s on %s not delivered", state, name, redact_uri(self._uri))
