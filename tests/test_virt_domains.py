"""Volumes, domains and lifecycle events of the virt drivers: the real local libvirt + QEMU (TCG),
libvirt's test driver where it helps, and the fake driver, which must behave the same.

Real boots are few (two tests, each one guest), because each costs seconds on two cores. Every test
names what it creates with a unique prefix and removes it in a finalizer, also when it fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import tracemalloc
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sovra.images.inspection import inspect_file
from sovra.images.nocloud import make_nocloud_seed
from sovra.virt import (
    DomainNotFound,
    DomainSpec,
    HostUnreachable,
    PowerState,
    VirtDriver,
    VirtError,
    VolumeNotFound,
    connect,
)
from sovra.virt import fake as fake_virt
from sovra.virt.domain_xml import METADATA_NAMESPACE, backup_xml, console_log_volume, disk_target, render
from sovra.virt.driver import STORAGE_POOL, STORAGE_POOL_PATH
from sovra.virt.libvirt_driver import LibvirtDriver

#: How long a guest may take to get somewhere; only an upper bound for polling, never asserted.
DEADLINE = 120.0
GIB = 1 << 30
LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"


# -- helpers -----------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it never does."""
    give_up = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


class Events:
    """An event callback that records what it got and from which thread."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.seen: list[tuple[str, PowerState]] = []
        self.threads: set[int] = set()

    def __call__(self, domain: str, state: PowerState) -> None:
        with self._changed:
            self.seen.append((domain, state))
            self.threads.add(threading.get_ident())
            self._changed.notify_all()

    def wait_for(self, domain: str, state: PowerState) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: (domain, state) in self.seen, DEADLINE):
                pytest.fail(f"no {state} event for {domain}; got {self.seen}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _FailingSource(io.RawIOBase):
    """A source that breaks after ``good`` bytes, like a blob store losing its disk mid-read."""

    def __init__(self, good: int) -> None:
        self._left = good

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise OSError("simulated read error")
        chunk = min(self._left, size if size >= 0 else self._left)
        self._left -= chunk
        return b"\1" * chunk


def _kill_qemu(domain_id: str) -> None:
    """SIGKILL the QEMU process of one of our test domains (libvirt records its pid)."""
    pid = int(Path(f"/run/libvirt/qemu/{domain_id}.pid").read_text())
    os.kill(pid, 9)


@dataclass
class Backend:
    """A driver under test, with the names it handed out (for the finalizer)."""

    uri: str
    driver: VirtDriver
    crash: Callable[[str], None]
    boot_banner: str  # what the console shows first at every boot
    prefix: str = field(default_factory=lambda: f"sovra-test-{uuid.uuid4().hex[:8]}-")
    domains: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume_name(self, role: str) -> str:
        name = f"{self.prefix}{role}"
        self.volumes.append(name)
        return name

    def domain_id(self) -> str:
        domain_id = str(uuid.uuid4())
        self.domains.append(domain_id)
        return domain_id

    def upload(self, role: str, data: bytes) -> str:
        name = self.volume_name(role)
        self.driver.upload_volume(name, io.BytesIO(data), len(data))
        return name

    def spec(self, root: str, seed: str | None = None) -> DomainSpec:
        return DomainSpec(
            id=self.domain_id(),
            vcpus=1,
            memory_mib=128,
            accelerator="tcg",
            root_volume=root,
            seed_volume=seed,
        )


def _clean_up(backend: Backend) -> None:
    """Remove every domain and volume the test made, through a fresh connection (the test may have
    closed or broken its own)."""
    driver = connect(backend.uri)
    try:
        for domain_id in backend.domains:
            driver.undefine_domain(domain_id)
        for name in backend.volumes:
            driver.delete_volume(name)
    finally:
        driver.close()


def _libvirt_backend(uri: str) -> Backend:
    return Backend(uri, connect(uri), crash=_kill_qemu, boot_banner="SYSLINUX")


def _fake_backend() -> Backend:
    host = f"test-{uuid.uuid4().hex[:12]}"

    def crash(domain_id: str) -> None:
        fake_virt.crash(host, domain_id)

    return Backend(f"fake://{host}", connect(f"fake://{host}"), crash, boot_banner="SeaBIOS")


@contextlib.contextmanager
def _cleaned_up(backend: Backend) -> Iterator[Backend]:
    try:
        yield backend
    finally:
        backend.driver.close()
        _clean_up(backend)


@pytest.fixture(params=["libvirt", "fake"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each driver in turn, on a host of its own kind."""
    if request.param == "libvirt":
        made = _libvirt_backend(request.getfixturevalue("libvirt_daemon"))
    else:
        made = _fake_backend()
    with _cleaned_up(made):
        yield made


@pytest.fixture
def real(libvirt_daemon: str) -> Iterator[Backend]:
    """The local libvirtd only (for what needs a real guest)."""
    with _cleaned_up(_libvirt_backend(libvirt_daemon)) as made:
        yield made


def _seed(backend: Backend, tmp_path: Path, marker: str) -> str:
    iso = make_nocloud_seed(
        tmp_path / "seed.iso",
        instance_id=f"iid-{marker}",
        hostname="vt",
        user_data=f"#!/bin/sh\necho {marker}\n",
    )
    return backend.upload("seed", iso.read_bytes())


def _boot_disks(backend: Backend, tiny_image: Path) -> str:
    """The tiny image as a base volume and a 1 GiB overlay over it; returns the overlay's name."""
    base = backend.upload("base", tiny_image.read_bytes())
    root = backend.volume_name("root")
    backend.driver.create_overlay(root, base, "qcow2", GIB)
    return root


# -- domain XML -----------------------------------------------------------------------------------


def _spec(**changes: object) -> DomainSpec:
    values: dict[str, object] = {
        "id": "0190f3a0-0000-7000-8000-000000000001",
        "vcpus": 2,
        "memory_mib": 256,
        "accelerator": "tcg",
        "root_volume": "root",
        "seed_volume": "seed",
    }
    values.update(changes)
    return DomainSpec(**values)  # type: ignore[arg-type]


def test_the_domain_xml_of_a_tcg_server() -> None:
    spec = _spec()
    domain = ET.fromstring(render(spec, "/pool/x.console.log"))
    assert domain.get("type") == "qemu"
    assert domain.findtext("name") == domain.findtext("uuid") == spec.id
    assert (domain.findtext("memory"), domain.find("memory").get("unit")) == ("256", "MiB")  # type: ignore[union-attr]
    assert domain.findtext("vcpu") == "2"
    assert domain.find("os/type").attrib == {"arch": "x86_64", "machine": "pc"}  # type: ignore[union-attr]
    assert domain.find("features/acpi") is not None
    assert domain.find("cpu") is None  # TCG runs libvirt's default model
    assert [domain.findtext(f"on_{event}") for event in ("poweroff", "reboot", "crash")] == [
        "destroy",
        "restart",
        "destroy",
    ]
    root, seed = domain.findall("devices/disk")
    assert root.attrib == {"type": "volume", "device": "disk"}
    assert root.find("source").attrib == {"pool": STORAGE_POOL, "volume": "root"}  # type: ignore[union-attr]
    assert root.find("target").attrib == {"dev": "vda", "bus": "virtio"}  # type: ignore[union-attr]
    assert root.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert seed.get("device") == "cdrom"
    assert seed.find("target").get("bus") == "ide"  # type: ignore[union-attr]
    assert seed.find("readonly") is not None
    assert domain.find("devices/serial").get("type") == "pty"  # type: ignore[union-attr]
    assert domain.find("devices/serial/log").attrib == {"file": "/pool/x.console.log", "append": "on"}  # type: ignore[union-attr]
    assert domain.find("devices/interface") is None
    assert domain.find("devices/graphics") is None
    assert domain.findtext(f"metadata/{{{METADATA_NAMESPACE}}}server/{{{METADATA_NAMESPACE}}}id") == spec.id


def test_the_domain_xml_of_a_kvm_server_without_seed() -> None:
    domain = ET.fromstring(render(_spec(accelerator="kvm", seed_volume=None), "/p/l"))
    assert domain.get("type") == "kvm"
    assert domain.find("cpu").get("mode") == "host-model"  # type: ignore[union-attr]
    assert [disk.get("device") for disk in domain.findall("devices/disk")] == ["disk"]


def test_values_cannot_change_the_xml_structure() -> None:
    hostile = "r'/><disk type='file'><source file='/etc/shadow'/></disk><x a='"
    domain = ET.fromstring(render(_spec(root_volume=hostile, seed_volume=None), "/p/</log>"))
    (disk,) = domain.findall("devices/disk")
    assert disk.find("source").get("volume") == hostile  # type: ignore[union-attr]
    assert domain.find("devices/serial/log").get("file") == "/p/</log>"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"id": "server-1"}, "must be a lowercase UUID"),
        ({"vcpus": 0}, "vcpus must be at least 1"),
        ({"memory_mib": 0}, "memory_mib must be at least 1"),
        ({"accelerator": "hvf"}, "accelerator must be kvm or tcg"),
        ({"arch": "aarch64"}, "architecture 'aarch64' is not supported"),
        ({"root_volume": ""}, "root_volume must name a volume"),
    ],
)
def test_a_spec_that_cannot_be_a_domain_is_refused_by_name(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        render(_spec(**changes), "/p/l")


def test_disk_target_and_backup_document() -> None:
    xml = render(_spec(), "/p/l")
    assert disk_target(xml, "root", "/elsewhere") == "vda"
    assert disk_target(xml, "seed", "/elsewhere") == "hdc"
    assert disk_target(xml, "other", "/elsewhere") is None
    backup = ET.fromstring(backup_xml(xml, "vda", "/pool/copy"))
    assert backup.get("mode") == "push"
    disks = {disk.get("name"): disk for disk in backup.findall("disks/disk")}
    assert disks["vda"].get("backup") == "yes"
    assert disks["vda"].find("target").get("file") == "/pool/copy"  # type: ignore[union-attr]
    assert disks["hdc"].attrib == {"name": "hdc", "backup": "no"}


# -- volumes, on both drivers ---------------------------------------------------------------------------


def test_an_upload_arrives_intact(backend: Backend) -> None:
    data = os.urandom(3 * (1 << 20) + 123)  # several stream chunks and a ragged end
    name = backend.upload("blob", data)
    info = backend.driver.volume(name)
    assert info is not None
    assert (info.name, info.capacity_bytes) == (name, len(data))
    assert info.path.endswith(f"/{name}")
    assert backend.driver.volume_sha256(name) == _sha256(data)
    assert b"".join(backend.driver.download_volume(name, chunk_size=1 << 16)) == data


def test_an_upload_replaces_a_volume_of_the_same_name(backend: Backend) -> None:
    name = backend.upload("blob", b"old contents, a partial copy perhaps")
    backend.driver.upload_volume(name, io.BytesIO(b"new"), 3)
    assert backend.driver.volume_sha256(name) == _sha256(b"new")


@pytest.mark.parametrize(
    ("source", "size", "error", "message"),
    [
        (lambda: _FailingSource(good=(1 << 20) + 5), 4 << 20, OSError, "simulated read error"),
        (lambda: io.BytesIO(b"12345"), 10, ValueError, "the source ended after 5 of 10 bytes"),
        (lambda: io.BytesIO(b"12345"), 3, ValueError, "the source holds more than the 3 bytes announced"),
    ],
    ids=["source-raises-midway", "source-too-short", "source-too-long"],
)
def test_a_failed_upload_leaves_no_volume(
    backend: Backend, source: Callable[[], io.RawIOBase], size: int, error: type[Exception], message: str
) -> None:
    name = backend.upload("blob", b"an earlier, partial attempt")
    with pytest.raises(error, match=message):
        backend.driver.upload_volume(name, source(), size)  # type: ignore[arg-type]
    assert backend.driver.volume(name) is None


def test_volume_calls_name_a_missing_volume(backend: Backend) -> None:
    missing = backend.volume_name("missing")
    assert backend.driver.volume(missing) is None
    backend.driver.delete_volume(missing)  # idempotent
    for call in (
        lambda: backend.driver.volume_sha256(missing),
        lambda: backend.driver.download_volume(missing),
        lambda: backend.driver.resize_volume(missing, GIB),
        lambda: backend.driver.flatten_volume(missing, backend.volume_name("copy")),
    ):
        with pytest.raises(VolumeNotFound, match=missing):
            call()


@pytest.mark.parametrize("name", ["", "a/b", "..", "x" * 256, "nul\0byte"])
def test_volume_names_must_be_file_names(backend: Backend, name: str) -> None:
    with pytest.raises(ValueError, match="must be a file name"):
        backend.driver.upload_volume(name, io.BytesIO(b"x"), 1)
    with pytest.raises(ValueError, match="must be a file name"):
        backend.driver.volume(name)


def test_an_overlay_is_made_once_and_checked(backend: Backend, tiny_image: Path) -> None:
    base = backend.upload("base", tiny_image.read_bytes())
    base_capacity = backend.driver.volume(base).capacity_bytes  # type: ignore[union-attr]
    root = backend.volume_name("root")
    made = backend.driver.create_overlay(root, base, "qcow2", GIB)
    assert (made.name, made.capacity_bytes) == (root, GIB)
    assert made.allocation_bytes < base_capacity  # copy-on-write: nothing copied
    assert backend.driver.create_overlay(root, base, "qcow2", 2 * GIB) == made  # idempotent: returned as is

    small = backend.volume_name("small")
    with pytest.raises(
        ValueError, match=f"smaller than the {base_capacity} bytes of its backing volume {base}"
    ):
        backend.driver.create_overlay(small, base, "qcow2", base_capacity - 1)
    orphan = backend.volume_name("orphan")
    missing = backend.volume_name("missing")
    with pytest.raises(VolumeNotFound, match=f"{missing} \\(the backing of overlay {orphan}\\)"):
        backend.driver.create_overlay(orphan, missing, "qcow2", GIB)
    with pytest.raises(ValueError, match="backing format must be one of"):
        backend.driver.create_overlay(orphan, base, "vmdk", GIB)
    assert backend.driver.volume(small) is None
    assert backend.driver.volume(orphan) is None


def test_a_volume_only_grows(backend: Backend, tiny_image: Path) -> None:
    base = backend.upload("base", tiny_image.read_bytes())
    root = backend.volume_name("root")
    backend.driver.create_overlay(root, base, "qcow2", GIB)
    backend.driver.resize_volume(root, 2 * GIB)
    backend.driver.resize_volume(root, 2 * GIB)  # the same size: nothing to do
    assert backend.driver.volume(root).capacity_bytes == 2 * GIB  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=f"volume {root}: volumes only grow"):
        backend.driver.resize_volume(root, GIB)
    assert backend.driver.volume(root).capacity_bytes == 2 * GIB  # type: ignore[union-attr]


def test_flattening_an_idle_overlay_gives_a_standalone_qcow2(
    backend: Backend, tiny_image: Path, tmp_path: Path
) -> None:
    root = _boot_disks(backend, tiny_image)
    target = backend.volume_name("flat")
    backend.upload("flat", b"a stale copy from an earlier attempt")
    info = backend.driver.flatten_volume(root, target)
    assert (info.name, info.capacity_bytes) == (target, GIB)
    copy = tmp_path / "flat.qcow2"
    copy.write_bytes(b"".join(backend.driver.download_volume(target)))
    assert inspect_file(copy, "qcow2").format == "qcow2"  # a backing file would be refused
    with pytest.raises(ValueError, match="must differ"):
        backend.driver.flatten_volume(root, root)


# -- domains, on both drivers ---------------------------------------------------------------------------


def test_calls_on_an_unknown_domain(backend: Backend) -> None:
    unknown = backend.domain_id()
    calls: list[Callable[[], None]] = [
        lambda: backend.driver.start_domain(unknown),
        lambda: backend.driver.shutdown_domain(unknown),
        lambda: backend.driver.reboot_domain(unknown, hard=False),
        lambda: backend.driver.reboot_domain(unknown, hard=True),
    ]
    for call in calls:
        with pytest.raises(DomainNotFound, match=unknown):
            call()
    backend.driver.destroy_domain(unknown)  # idempotent
    backend.driver.undefine_domain(unknown)  # idempotent
    assert backend.driver.power_state(unknown) == PowerState.MISSING
    assert backend.driver.console_log(unknown) == ""
    assert unknown not in backend.driver.domains()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [({"vcpus": 0}, "vcpus must be at least 1"), ({"arch": "ppc64le"}, "architecture 'ppc64le'")],
)
def test_a_bad_spec_defines_nothing(backend: Backend, changes: dict[str, object], problem: str) -> None:
    spec = backend.spec("root")
    bad = dataclasses.replace(spec, **changes)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=problem):
        backend.driver.define_domain(bad)
    assert backend.driver.power_state(spec.id) == PowerState.MISSING
    assert backend.driver.volume(console_log_volume(spec.id)) is None  # not even its console log


def test_define_is_idempotent_and_start_needs_the_disks(backend: Backend) -> None:
    root = backend.volume_name("root")
    spec = backend.spec(root)
    backend.driver.define_domain(spec)
    backend.driver.define_domain(dataclasses.replace(spec, memory_mib=256))
    assert list(backend.driver.domains()).count(spec.id) == 1
    assert backend.driver.power_state(spec.id) == PowerState.SHUTOFF
    with pytest.raises(VirtError, match=root):
        backend.driver.start_domain(spec.id)
    assert backend.driver.power_state(spec.id) == PowerState.SHUTOFF
    with pytest.raises(VirtError, match=f"domain {spec.id}.*not running"):
        backend.driver.reboot_domain(spec.id, hard=True)
    backend.driver.shutdown_domain(spec.id)  # not running: nothing to do
    backend.driver.destroy_domain(spec.id)
    backend.driver.undefine_domain(spec.id)
    assert backend.driver.power_state(spec.id) == PowerState.MISSING


@pytest.mark.slow
def test_power_lifecycle_with_events(backend: Backend, tiny_image: Path, tmp_path: Path) -> None:
    """Boot, soft reboot, hard reset, destroy, crash, undefine; each seen in state and events.
    (One boot to the login prompt: later boots are seen by the boot loader's banner.)"""
    driver = backend.driver
    events = Events()
    watch = driver.watch_events(events)
    try:
        spec = backend.spec(_boot_disks(backend, tiny_image))
        driver.define_domain(spec)
        driver.start_domain(spec.id)
        driver.start_domain(spec.id)  # already running: nothing happens
        events.wait_for(spec.id, PowerState.RUNNING)
        assert driver.power_state(spec.id) == PowerState.RUNNING
        assert driver.domains()[spec.id] == PowerState.RUNNING
        wait_until(lambda: "login:" in driver.console_log(spec.id), "the login prompt")

        def boots() -> int:
            return driver.console_log(spec.id).count(backend.boot_banner)

        driver.reboot_domain(spec.id, hard=False)  # the guest powers off; libvirt restarts it
        wait_until(lambda: boots() == 2, "the boot loader after the soft reboot")
        assert "power button pressed" in driver.console_log(spec.id)
        assert driver.power_state(spec.id) == PowerState.RUNNING
        driver.reboot_domain(spec.id, hard=True)
        wait_until(lambda: boots() == 3, "the boot loader after the reset")
        assert driver.console_log(spec.id).count("power button pressed") == 1  # a reset asks no one

        driver.destroy_domain(spec.id)
        events.wait_for(spec.id, PowerState.SHUTOFF)
        assert driver.power_state(spec.id) == PowerState.SHUTOFF
        driver.destroy_domain(spec.id)  # idempotent

        driver.start_domain(spec.id)
        backend.crash(spec.id)
        events.wait_for(spec.id, PowerState.CRASHED)
        wait_until(lambda: driver.power_state(spec.id) == PowerState.CRASHED, "the crashed state")

        driver.undefine_domain(spec.id)
        events.wait_for(spec.id, PowerState.MISSING)
        assert driver.power_state(spec.id) == PowerState.MISSING
        assert driver.console_log(spec.id) == ""
        assert threading.get_ident() not in events.threads  # delivered by the driver, not inline
        assert watch.alive()
    finally:
        watch.close()
    assert not watch.alive()


# -- the real guest ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_guest_boots_from_its_overlay_and_seed(real: Backend, tiny_image: Path, tmp_path: Path) -> None:
    """Upload, overlay, seed, boot; the console shows the guest's own output; a running disk
    flattens into a standalone image; a graceful shutdown; undefine leaves nothing."""
    driver = real.driver
    base = real.upload("base", tiny_image.read_bytes())
    assert driver.volume_sha256(base) == _sha256(tiny_image.read_bytes())
    root = real.volume_name("root")
    driver.create_overlay(root, base, "qcow2", GIB)
    marker = f"SOVRA-VT-{uuid.uuid4().hex[:8]}"
    spec = real.spec(root, seed=_seed(real, tmp_path, marker))
    events = Events()
    watch = driver.watch_events(events)
    try:
        driver.define_domain(spec)
        driver.start_domain(spec.id)
        wait_until(lambda: "vt login:" in driver.console_log(spec.id), "the guest's login prompt")
        console = driver.console_log(spec.id)
        assert f"\n{marker}\n" in console  # printed by the seed's user-data script, in the guest
        tail = driver.console_log(spec.id, max_bytes=12)
        assert 0 < len(tail) <= 12
        assert console.endswith(tail)

        flat = real.volume_name("flat")
        assert driver.flatten_volume(root, flat).capacity_bytes == GIB
        assert driver.power_state(spec.id) == PowerState.RUNNING  # never stopped for the copy
        copy = tmp_path / "flat.qcow2"
        copy.write_bytes(b"".join(driver.download_volume(flat)))
        assert inspect_file(copy, "qcow2").virtual_size == GIB

        driver.resize_volume(root, 2 * GIB)  # in use: grown by the running domain, not qemu-img
        assert driver.volume(root).capacity_bytes == 2 * GIB  # type: ignore[union-attr]

        driver.shutdown_domain(spec.id)  # the guest's init powers off on the ACPI power button
        events.wait_for(spec.id, PowerState.SHUTOFF)
        assert driver.power_state(spec.id) == PowerState.SHUTOFF
        assert "power button pressed, powering off" in driver.console_log(spec.id)
        driver.undefine_domain(spec.id)
    finally:
        watch.close()
    assert driver.power_state(spec.id) == PowerState.MISSING
    left = [name for name in os.listdir(STORAGE_POOL_PATH) if name.startswith(spec.id)]
    assert left == []  # the console log went with the domain (the files, not only the volumes)


# -- hosts that go away ---------------------------------------------------------------------------------


class _SocketProxy:
    """A unix-socket relay to libvirtd that the test can freeze (a silent host) or cut (a dead one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frozen = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(LIBVIRT_SOCKET)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._relay, args=(source, sink), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(1 << 16)
                if not data:
                    return
                if not self.frozen.is_set():
                    sink.sendall(data)
            except OSError:
                return

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):  # the peer may have closed it already
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def proxy(libvirt_daemon: str) -> Iterator[_SocketProxy]:
    directory = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))  # unix socket paths are short
    relay = _SocketProxy(directory / "libvirt.sock")
    try:
        yield relay
    finally:
        relay.cut()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_host_that_dies_is_unreachable_for_every_call(proxy: _SocketProxy) -> None:
    uri = f"qemu:///system?socket={proxy.path}"
    driver = connect(uri)
    watch = driver.watch_events(Events())
    try:
        assert driver.domains() is not None
        proxy.cut()
        domain = str(uuid.uuid4())
        for call in (
            lambda: driver.power_state(domain),
            lambda: driver.domains(),
            lambda: driver.volume("anything"),
            lambda: driver.start_domain(domain),
            lambda: driver.upload_volume("anything", io.BytesIO(b"x"), 1),
        ):
            with pytest.raises(HostUnreachable, match=re.escape(f"host {uri} is unreachable")):
                call()
        wait_until(lambda: not watch.alive(), "the watch to notice its connection is gone")
        assert not driver.alive()
    finally:
        watch.close()
        driver.close()


def test_a_host_that_stops_answering_is_noticed_by_keepalive(proxy: _SocketProxy) -> None:
    driver = LibvirtDriver.open(f"qemu:///system?socket={proxy.path}", keepalive=(1, 1))
    try:
        driver.domains()
        proxy.frozen.set()
        with pytest.raises(HostUnreachable, match="keepalive timeout"):
            driver.domains()
        assert not driver.alive()
    finally:
        driver.close()


def test_a_closed_driver_is_unreachable(backend: Backend) -> None:
    backend.driver.close()
    with pytest.raises(HostUnreachable, match="connection closed"):
        backend.driver.power_state(backend.domain_id())
    with pytest.raises(HostUnreachable, match="connection closed"):
        backend.driver.volume(backend.volume_name("any"))


# -- libvirt's test driver: pool creation, and what it cannot do --------------------------------------------


def test_the_storage_pool_is_created_when_missing(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text("<node/>")  # a private, empty in-memory host
    driver = LibvirtDriver.open(f"test://{node}")
    try:
        assert driver.volume("anything") is None
        assert driver.inventory().disk_gib > 0  # the pool "default" exists and is active
        pool = driver._pool()  # white box: every open of a test:// file is a host of its own
        assert (pool.isActive(), pool.autostart(), pool.name()) == (1, 1, STORAGE_POOL)
        assert ET.fromstring(pool.XMLDesc(0)).findtext("target/path") == STORAGE_POOL_PATH
        # The test driver cannot stream volumes: the refusal names the volume and leaves nothing.
        with pytest.raises(VirtError, match=r"volume img on test://.*virStorageVolUpload"):
            driver.upload_volume("img", io.BytesIO(b"abc"), 3)
        assert driver.volume("img") is None
    finally:
        driver.close()


# -- the fake's own promises --------------------------------------------------------------------------------


def test_fake_connections_to_one_host_share_it_and_hosts_are_separate() -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    first, second, other = (
        connect(f"fake://{name}"),
        connect(f"fake://{name}?cpus=4"),
        connect(f"fake://{name}-2"),
    )
    first.upload_volume("base", io.BytesIO(b"bytes"), 5)
    spec = DomainSpec(id=str(uuid.uuid4()), vcpus=1, memory_mib=128, accelerator="kvm", root_volume="base")
    first.define_domain(spec)
    second.start_domain(spec.id)
    assert first.power_state(spec.id) == PowerState.RUNNING
    assert second.volume_sha256("base") == _sha256(b"bytes")
    assert other.power_state(spec.id) == PowerState.MISSING
    assert other.volume("base") is None
    first.undefine_domain(spec.id)
    first.delete_volume("base")


def test_fake_crash_and_outage() -> None:
    host = f"flaky-{uuid.uuid4().hex[:8]}"
    driver = connect(f"fake://{host}")
    events = Events()
    watch = driver.watch_events(events)
    driver.upload_volume("root", io.BytesIO(b"r"), 1)
    spec = DomainSpec(id=str(uuid.uuid4()), vcpus=1, memory_mib=128, accelerator="kvm", root_volume="root")
    driver.define_domain(spec)
    with pytest.raises(VirtError, match="not running, it cannot crash"):
        fake_virt.crash(host, spec.id)
    with pytest.raises(DomainNotFound, match="not defined"):
        fake_virt.crash(host, str(uuid.uuid4()))
    driver.start_domain(spec.id)
    fake_virt.crash(host, spec.id)
    events.wait_for(spec.id, PowerState.CRASHED)
    assert "Kernel panic" in driver.console_log(spec.id)
    fake_virt.set_reachable(host, False)
    try:
        assert not watch.alive()
        for call in (
            lambda: driver.power_state(spec.id),
            lambda: driver.domains(),
            lambda: driver.volume("root"),
        ):
            with pytest.raises(HostUnreachable, match="simulated outage"):
                call()
    finally:
        fake_virt.set_reachable(host, True)
    assert not watch.alive()  # a lost watch stays lost: open a new one and resync
    assert driver.power_state(spec.id) == PowerState.CRASHED
    driver.undefine_domain(spec.id)
    driver.delete_volume("root")


def test_fake_servers_are_cheap_at_scale() -> None:
    """10,000 hosts with one running server each: a few KiB per host, images stored once (the
    image alone is larger than what a host may cost)."""
    image = os.urandom(64 << 10)
    hosts = [f"scale-{uuid.uuid4().hex[:8]}-{n}" for n in range(10_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for host in hosts:
            driver = connect(f"fake://{host}")
            driver.upload_volume("base", io.BytesIO(image), len(image))
            spec = DomainSpec(
                id=str(uuid.uuid4()), vcpus=1, memory_mib=128, accelerator="kvm", root_volume="root"
            )
            driver.create_overlay("root", "base", "qcow2", GIB)
            driver.define_domain(spec)
            driver.start_domain(spec.id)
        per_host = (tracemalloc.get_traced_memory()[0] - before - len(image)) / len(hosts)
    finally:
        tracemalloc.stop()
        for host in hosts:
            driver = connect(f"fake://{host}")
            for domain_id in driver.domains():
                driver.undefine_domain(domain_id)
            driver.delete_volume("root")
            driver.delete_volume("base")
    assert per_host < 8 * 1024
