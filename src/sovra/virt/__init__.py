"""Hypervisor drivers: the interface the control plane uses, a libvirt driver, a fake for scale tests."""

from sovra.virt.driver import (
    DomainNotFound,
    DomainSpec,
    EventWatch,
    HostInventory,
    HostUnreachable,
    PowerState,
    UnsupportedURI,
    VirtDriver,
    VirtError,
    VolumeInfo,
    VolumeNotFound,
    connect,
)

__all__ = [
    "DomainNotFound",
    "DomainSpec",
    "EventWatch",
    "HostInventory",
    "HostUnreachable",
    "PowerState",
    "UnsupportedURI",
    "VirtDriver",
    "VirtError",
    "VolumeInfo",
    "VolumeNotFound",
    "connect",
]
