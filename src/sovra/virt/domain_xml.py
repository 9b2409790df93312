"""The libvirt domain XML of a server, rendered from a :class:`~sovra.virt.driver.DomainSpec`.

Built with ElementTree, never by formatting values into a template, so no value can change the
document's structure. What the document says, and why:

* ``type='qemu'`` (TCG) or ``'kvm'``; ``<cpu mode='host-model'>`` only under KVM, since TCG
  cannot emulate the host's model and libvirt's default (``qemu64``) is what TCG runs best.
* name *and* UUID are the server id: a retried define updates the domain it made before.
* the root disk is the overlay volume on ``virtio`` (the Sovra tiny image and cloud images boot
  from it through SeaBIOS), the NoCloud seed a read-only IDE CD-ROM, as cloud-init expects.
* the serial console is a pty whose ``<log>`` file is a volume of the storage pool (the driver
  creates it empty; virtlogd appends), so ``virStorageVolDownload`` reads it back, also remotely.
* ACPI on, so ``shutdown`` and soft ``reboot`` can press the virtual power button; a guest that
  powers off or crashes is stopped (``destroy``), one that reboots restarts.
* no NIC (networking comes later), no graphics, and a ``<metadata>`` element naming the server.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from sovra.domain.ids import is_id
from sovra.virt.driver import STORAGE_POOL, DomainSpec

#: Namespace of Sovra's element inside ``<metadata>`` (libvirt keeps one element per namespace).
METADATA_NAMESPACE = "https://sovra.dev/xmlns/domain/1"
METADATA_PREFIX = "sovra"
#: Machine type per guest architecture; others are refused until they are tested.
MACHINES = {"x86_64": "pc", "i686": "pc"}
#: Suffix of the console log volume, next to the domain's disks in the storage pool.
CONSOLE_LOG_SUFFIX = ".console.log"

ET.register_namespace(METADATA_PREFIX, METADATA_NAMESPACE)


def console_log_volume(domain_id: str) -> str:
    """The name of the volume holding the domain's serial console log."""
    return f"{domain_id}{CONSOLE_LOG_SUFFIX}"


def validate(spec: DomainSpec) -> None:
    """Raise ValueError naming the field when ``spec`` cannot become a domain."""
    if not is_id(spec.id):
        raise ValueError(f"domain id {spec.id!r} must be a lowercase UUID (it is the domain's UUID)")
    if spec.vcpus < 1:
        raise ValueError(f"domain {spec.id}: vcpus must be at least 1, got {spec.vcpus}")
    if spec.memory_mib < 1:
        raise ValueError(f"domain {spec.id}: memory_mib must be at least 1, got {spec.memory_mib}")
    if spec.accelerator not in ("kvm", "tcg"):
        raise ValueError(f"domain {spec.id}: accelerator must be kvm or tcg, got {spec.accelerator!r}")
    if spec.arch not in MACHINES:
        raise ValueError(
            f"domain {spec.id}: architecture {spec.arch!r} is not supported; use one of {sorted(MACHINES)}"
        )
    for field, volume in (("root_volume", spec.root_volume), ("seed_volume", spec.seed_volume)):
        if volume is not None and not volume:
            raise ValueError(f"domain {spec.id}: {field} must name a volume")


def render(spec: DomainSpec, console_log_path: str) -> str:
    """The domain XML for ``spec``; the console is logged to ``console_log_path`` on the host."""
    validate(spec)
    domain = ET.Element("domain", type="kvm" if spec.accelerator == "kvm" else "qemu")
    _text(domain, "name", spec.id)
    _text(domain, "uuid", spec.id)
    _metadata(domain, spec)
    _text(domain, "memory", str(spec.memory_mib), unit="MiB")
    _text(domain, "vcpu", str(spec.vcpus))
    os_element = ET.SubElement(domain, "os")
    _text(os_element, "type", "hvm", arch=spec.arch, machine=MACHINES[spec.arch])
    ET.SubElement(os_element, "boot", dev="hd")
    ET.SubElement(ET.SubElement(domain, "features"), "acpi")
    if spec.accelerator == "kvm":
        ET.SubElement(domain, "cpu", mode="host-model")
    _text(domain, "on_poweroff", "destroy")
    _text(domain, "on_reboot", "restart")
    _text(domain, "on_crash", "destroy")
    devices = ET.SubElement(domain, "devices")
    _disk(devices, spec.root_volume, device="disk", driver_type="qcow2", target="vda", bus="virtio")
    if spec.seed_volume is not None:
        seed = _disk(devices, spec.seed_volume, device="cdrom", driver_type="raw", target="hdc", bus="ide")
        ET.SubElement(seed, "readonly")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=console_log_path, append="on")
    ET.SubElement(serial, "target", port="0")
    return ET.tostring(domain, encoding="unicode")


def _metadata(domain: ET.Element, spec: DomainSpec) -> None:
    server = ET.SubElement(ET.SubElement(domain, "metadata"), f"{{{METADATA_NAMESPACE}}}server")
    _text(server, f"{{{METADATA_NAMESPACE}}}id", spec.id)


def _disk(
    devices: ET.Element, volume: str, *, device: str, driver_type: str, target: str, bus: str
) -> ET.Element:
    disk = ET.SubElement(devices, "disk", type="volume", device=device)
    ET.SubElement(disk, "driver", name="qemu", type=driver_type)
    ET.SubElement(disk, "source", pool=STORAGE_POOL, volume=volume)
    ET.SubElement(disk, "target", dev=target, bus=bus)
    return disk


def _text(parent: ET.Element, tag: str, text: str, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    element.text = text
    return element


def disk_target(domain_xml: str, volume: str, path: str) -> str | None:
    """The target device (``vda``) of the domain's disk whose source is ``volume`` of
    :data:`STORAGE_POOL`, or the file ``path`` (disks defined by path rather than by volume)."""
    for disk in ET.fromstring(domain_xml).iterfind("devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        if source is None or target is None:
            continue
        by_volume = source.get("pool") == STORAGE_POOL and source.get("volume") == volume
        if by_volume or source.get("file") == path:
            return target.get("dev")
    return None


def backup_xml(domain_xml: str, device: str, target_path: str) -> str:
    """A push-mode backup of the disk ``device`` into the existing qcow2 file ``target_path``;
    every other disk of the domain (the seed, for one) is excluded explicitly."""
    backup = ET.Element("domainbackup", mode="push")
    disks = ET.SubElement(backup, "disks")
    for target in ET.fromstring(domain_xml).iterfind("devices/disk/target"):
        name = target.get("dev", "")
        if name != device:
            ET.SubElement(disks, "disk", name=name, backup="no")
            continue
        disk = ET.SubElement(disks, "disk", name=name, backup="yes", type="file")
        ET.SubElement(disk, "target", file=target_path)
        ET.SubElement(disk, "driver", type="qcow2")
    return ET.tostring(backup, encoding="unicode")
