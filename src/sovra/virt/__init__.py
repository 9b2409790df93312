"""Hypervisor drivers: the interface the control plane uses, a libvirt driver, a fake for scale tests."""

from sovra.virt.driver import (
    HostInventory,
    HostUnreachable,
    UnsupportedURI,
    VirtDriver,
    connect,
)

__all__ = ["HostInventory", "HostUnreachable", "UnsupportedURI", "VirtDriver", "connect"]
