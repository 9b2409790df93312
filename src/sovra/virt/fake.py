"""An in-memory host, for scale simulation only (thousands of hosts without thousands of daemons).

``fake://<name>?cpus=..&memory_mib=..&disk_gib=..&arch=..&cpu_model=..&accelerator=..`` describes
the host entirely in its URI, so a scale test registers hosts exactly as an operator would register
real ones. Liveness is shared per name (:func:`set_reachable`), so a simulation can take a host
"down" and see every connection to it fail, as a real outage would.
"""

from __future__ import annotations

import threading
from typing import cast
from urllib.parse import parse_qs, urlsplit

from sovra.virt.driver import Accelerator, HostInventory, HostUnreachable, UnsupportedURI

FAKE_LIBVIRT_VERSION = "0.0.0"
_DEFAULTS = {
    "cpus": "16",
    "memory_mib": "65536",
    "disk_gib": "1000",
    "arch": "x86_64",
    "cpu_model": "fake",
    "accelerator": "kvm",
}

_lock = threading.Lock()
_unreachable: set[str] = set()


def set_reachable(name: str, reachable: bool) -> None:
    """Simulate an outage (or its end) of the fake host ``name`` for all its connections."""
    with _lock:
        if reachable:
            _unreachable.discard(name)
        else:
            _unreachable.add(name)


def _is_reachable(name: str) -> bool:
    with _lock:
        return name not in _unreachable


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
        self._closed = False

    @classmethod
    def open(cls, uri: str) -> FakeDriver:
        inventory = parse_fake_uri(uri)
        if not _is_reachable(inventory.hostname):
            raise HostUnreachable(uri, "simulated outage")
        return cls(uri, inventory)

    @property
    def uri(self) -> str:
        return self._uri

    def inventory(self) -> HostInventory:
        if not self.alive():
            raise HostUnreachable(self._uri, "connection closed" if self._closed else "simulated outage")
        return self._inventory

    def alive(self) -> bool:
        return not self._closed and _is_reachable(self._inventory.hostname)

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"FakeDriver({self._uri!r})"
