"""One open driver per host URI and process, reopened when it stops answering.

Opening a libvirt connection costs a round trip or an SSH/TLS handshake; server steps run one
after another against the same host, so they share the connection instead of opening their own.
"""

from __future__ import annotations

import threading

from sovra.virt.driver import VirtDriver, connect

CONNECT_TIMEOUT_SECONDS = 10.0

_lock = threading.Lock()
_drivers: dict[str, VirtDriver] = {}
_connecting: dict[str, threading.Lock] = {}


def driver_for(uri: str) -> VirtDriver:
    """The shared driver for ``uri``; raises HostUnreachable when the host does not answer.

    Reconnecting holds a lock of that URI only, so a dead host never delays steps on other hosts,
    and two threads never both replace (and close) each other's fresh connection.
    """
    with _lock:
        connecting = _connecting.setdefault(uri, threading.Lock())
    with connecting:
        with _lock:
            driver = _drivers.get(uri)
        if driver is not None and driver.alive():
            return driver
        if driver is not None:
            driver.close()
        fresh = connect(uri, timeout=CONNECT_TIMEOUT_SECONDS)
        with _lock:
            _drivers[uri] = fresh
        return fresh


def forget(uri: str) -> None:
    """Close and drop the driver of ``uri`` (a host was deleted)."""
    with _lock:
        driver = _drivers.pop(uri, None)
    if driver is not None:
        driver.close()
