"""The virt driver layer against a real libvirtd, libvirt's test driver and the fake driver."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from sovra.virt import HostInventory, HostUnreachable, UnsupportedURI, connect
from sovra.virt.fake import set_reachable
from tests.support.libvirt_daemon import ensure_libvirt_daemon


@pytest.fixture(scope="session")
def system_uri() -> str:
    return ensure_libvirt_daemon()


def _meminfo_total_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_inventory_of_the_local_system_daemon(system_uri: str) -> None:
    driver = connect(system_uri)
    try:
        inventory = driver.inventory()
        assert driver.alive()
    finally:
        driver.close()
    assert inventory.hostname == socket.gethostname()
    assert inventory.arch == "x86_64"
    assert inventory.cpu_model
    assert inventory.cpus == os.cpu_count()
    assert abs(inventory.memory_mib - _meminfo_total_mib()) <= 0.1 * _meminfo_total_mib()
    assert inventory.disk_gib >= 0
    # This machine's /dev/kvm is a software PVM device without vmx/svm: guests must run on TCG.
    assert inventory.accelerator == "tcg"
    assert inventory.libvirt_version.count(".") == 2
    assert inventory.hypervisor_version.count(".") == 2
    assert not driver.alive()


def test_inventory_of_libvirts_test_driver() -> None:
    driver = connect("test:///default")
    inventory = driver.inventory()
    driver.close()
    # The values of libvirt's built-in mock host.
    assert (inventory.arch, inventory.cpus, inventory.memory_mib) == ("i686", 16, 3072)
    assert inventory.disk_gib == 0  # its pool is called "default-pool", not "default"
    assert inventory.accelerator == "tcg"


def test_inventory_of_a_fake_host() -> None:
    driver = connect("fake://rack1-node7?cpus=64&memory_mib=262144&disk_gib=2000")
    assert driver.inventory() == HostInventory(
        hostname="rack1-node7",
        arch="x86_64",
        cpu_model="fake",
        cpus=64,
        memory_mib=262144,
        disk_gib=2000,
        accelerator="kvm",
        libvirt_version="0.0.0",
        hypervisor_version="0.0.0",
    )
    driver.close()
    assert not driver.alive()
    with pytest.raises(HostUnreachable):
        driver.inventory()


def test_a_fake_outage_makes_the_host_unreachable() -> None:
    driver = connect("fake://flaky")
    set_reachable("flaky", False)
    try:
        assert not driver.alive()
        with pytest.raises(HostUnreachable, match=r"fake://flaky.*simulated outage"):
            connect("fake://flaky")
    finally:
        set_reachable("flaky", True)
    assert driver.alive()


@pytest.mark.parametrize("uri", ["fake://", "fake://h?cpus=many", "fake://h?cpus=0", "fake://h?gpus=8"])
def test_malformed_fake_uris_are_refused(uri: str) -> None:
    with pytest.raises(UnsupportedURI):
        connect(uri)


def test_a_missing_daemon_socket_is_unreachable_with_libvirts_reason() -> None:
    started = time.monotonic()
    with pytest.raises(HostUnreachable) as caught:
        connect("qemu:///system?socket=/nonexistent/libvirt-sock", timeout=5)
    assert time.monotonic() - started < 5
    assert "qemu:///system?socket=/nonexistent/libvirt-sock" in str(caught.value)
    assert "/nonexistent/libvirt-sock" in caught.value.reason


def test_a_refused_ssh_port_is_unreachable() -> None:
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match=r"qemu\+ssh://nobody@127.0.0.1:1/system"):
        connect("qemu+ssh://nobody@127.0.0.1:1/system", timeout=5)
    assert time.monotonic() - started < 5


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung sshd)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_a_host_that_never_answers_times_out(silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match="no answer within 1 s"):
        connect(f"qemu+ssh://nobody@127.0.0.1:{silent_port}/system", timeout=1)
    assert 1 <= time.monotonic() - started < 3


def test_a_password_in_the_uri_is_not_repeated() -> None:
    with pytest.raises(HostUnreachable) as caught:
        connect("qemu+tls://admin:hunter2@127.0.0.1:1/system", timeout=5)
    assert "hunter2" not in str(caught.value)
    assert "admin:***@127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("uri", ["http://host/", "xen:///system", "qemu+tcp://host/system", "/var/run/x"])
def test_unsupported_schemes_are_refused_clearly(uri: str) -> None:
    with pytest.raises(UnsupportedURI, match=r"unsupported host URI scheme.*use one of"):
        connect(uri)
