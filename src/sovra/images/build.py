"""Build the "Sovra tiny" guest: a small qcow2 that boots by itself, made from Debian packages alone.

Boot tests, the image pipeline's own tests and demos need a real, bootable image that is small
and fast under TCG (no KVM on our machines) and that reacts to cloud-init NoCloud seeds the way
cloud images do. Nothing is downloaded except the Debian cloud kernel through apt; nothing is
mounted (no loop devices, no root-only mounts):

* kernel: ``linux-image-<ver>-cloud-amd64``, fetched once with ``apt-get download`` into the
  cache, unpacked with ``dpkg-deb``; ``vmlinuz`` plus the few modules the guest needs are kept
  in the cache as a "kernel bundle";
* userland: the host's ``busybox-static`` and a generated ``/init`` (busybox sh) in a gzip'd
  newc initramfs written by Python (so every file is root-owned whoever builds it);
* disk: MBR + one FAT32 partition + syslinux, assembled with ``sfdisk``, ``mkfs.vfat --offset``,
  ``syslinux --offset --install``, ``mbr.bin`` and ``mcopy``, then converted to qcow2.

The guest's ``/init`` mimics what a boot test looks for on a real cloud image: it applies a
NoCloud seed (label ``cidata``: ``meta-data`` and ``user-data``, a ``#!`` script or a small
``#cloud-config`` subset: ``hostname`` and ``ssh_authorized_keys``), prints
``Cloud-init v. 0.1-sovra finished at <uptime> seconds`` and ``<hostname> login:``, then idles
until the ACPI power button is pressed (clean ``poweroff -f``).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sovra.domain.image import ScsMetadata

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
"""Debian's meta package; its ``Depends`` names the current versioned cloud kernel."""
OS_DISTRO = "sovra-tiny"
OS_VERSION = "1.0"
CLOUD_INIT_VERSION = "0.1-sovra"
KERNEL_COMMAND_LINE = "console=ttyS0 panic=-1 quiet"

GUEST_MODULES = (
    *("virtio_pci", "virtio_blk", "virtio_net"),  # paravirtual disk and network
    *("ata_piix", "ata_generic", "sd_mod", "sr_mod"),  # IDE disks, and the CD-ROM a seed usually is
    *("isofs", "vfat", "nls_cp437", "nls_ascii"),  # the seed's filesystems (vfat: default charsets)
    *("button", "evdev"),  # the ACPI power button as an input event device
)
"""Loaded in this order (each after its dependencies): bus drivers before the device drivers
that bind to what the buses found, so ``/dev/sr0`` exists as soon as ``sr_mod`` is in."""

_DISK_BYTES = 64 * 1024 * 1024
_PARTITION_START_SECTOR = 2048  # 1 MiB, the usual alignment
_SECTOR = 512
_MBR_BOOT_CODE_BYTES = 440  # mbr.bin goes before the disk signature and the partition table
_MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_TOOL_PACKAGES = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "busybox": "busybox-static",
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "syslinux": "syslinux",
    "mcopy": "mtools",
    "qemu-img": "qemu-utils",
}


class BuildError(RuntimeError):
    """The image could not be built; the message says which step and tool failed and why."""


@dataclass(frozen=True)
class BuildResult:
    path: Path
    format: str
    size: int
    """Bytes of the qcow2 file."""
    virtual_size: int
    """Bytes the guest sees."""
    kernel_version: str
    """``uname -r`` of the guest, e.g. ``6.1.0-56-cloud-amd64``."""
    sha256: str
    metadata: dict[str, object] = field(default_factory=dict)
    """Suggested scs-0102 metadata, already validated by :class:`ScsMetadata`."""


@dataclass(frozen=True)
class KernelBundle:
    """What the guest needs from a kernel package, cached: the kernel and a few modules."""

    directory: Path
    version: str
    package_version: str

    @property
    def vmlinuz(self) -> Path:
        return self.directory / "vmlinuz"

    def modules(self) -> list[Path]:
        """The module files in load order."""
        names = (self.directory / "load-order").read_text().split()
        return [self.directory / "modules" / f"{name}.ko" for name in names]


BROKEN_INIT = """#!/bin/busybox sh
/bin/busybox echo "sovra-broken: this /init exits on purpose, so the kernel panics"
exit 1
"""
"""An ``/init`` for images that must fail a boot test: the kernel panics ("Attempted to kill
init!") and, with ``panic=-1`` and QEMU's ``-no-reboot``, the VM stops before any marker."""


def build_image(
    output: Path,
    *,
    work_dir: Path,
    cache_dir: Path,
    hostname_default: str = "sovra",
    init_script: str | None = None,
) -> BuildResult:
    """Build the tiny guest into ``output`` (qcow2, replaced atomically).

    ``work_dir`` holds the scratch files of this build (removed afterwards); ``cache_dir`` keeps
    the kernel package and its unpacked bundle between builds. ``init_script`` replaces the
    generated ``/init`` (e.g. :data:`BROKEN_INIT` for a guest that never boots).
    """
    if not _HOSTNAME_RE.fullmatch(hostname_default):
        raise BuildError(f"hostname_default {hostname_default!r} is not a valid host name")
    busybox = _static_busybox()
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiny-build-", dir=work_dir) as scratch_name:
        scratch = Path(scratch_name)
        bundle = kernel_bundle(cache_dir, scratch)
        initrd = scratch / "initrd.gz"
        init = init_script if init_script is not None else guest_init(hostname_default)
        initrd.write_bytes(_initramfs(busybox, init, bundle.modules()))
        raw = scratch / "disk.raw"
        _assemble_disk(raw, bundle.vmlinuz, initrd, scratch)
        _convert_to_qcow2(raw, output)
    virtual_size = _virtual_size(output)
    return BuildResult(
        path=output,
        format="qcow2",
        size=output.stat().st_size,
        virtual_size=virtual_size,
        kernel_version=bundle.version,
        sha256=_sha256(output),
        metadata=suggested_metadata(bundle, _busybox_version(busybox)),
    )


def suggested_metadata(bundle: KernelBundle, busybox_version: str) -> dict[str, object]:
    """scs-0102 properties for the tiny guest; validated here so a typo fails the build, not an upload."""
    metadata = ScsMetadata(
        architecture="x86_64",
        min_disk=1,
        min_ram=128,
        os_distro=OS_DISTRO,
        os_version=OS_VERSION,
        hw_disk_bus="virtio",
        os_purpose="minimal",
        replace_frequency="never",
        provided_until="none",
        uuid_validity="forever",
        image_source="private",
        image_description=(
            f"Sovra tiny test guest: Debian cloud kernel {bundle.version} ({bundle.package_version}), "
            f"BusyBox {busybox_version} initramfs, NoCloud seed support, syslinux boot, serial console"
        ),
        image_build_date=datetime.now(UTC).strftime("%Y-%m-%d"),
        image_original_user="root",
        patchlevel=bundle.package_version,
    )
    return metadata.model_dump(exclude_none=True)


# --- tools ---------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """Absolute path of a host tool; sbin directories count even when PATH lacks them."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search)
    if found is None:
        package = _TOOL_PACKAGES.get(name, name)
        raise BuildError(f"{name} is not installed (apt-get install {package})")
    return found


def _run(args: Sequence[str], *, cwd: Path | None = None, stdin: str | None = None) -> str:
    """Run a tool without a shell; a failure carries the tool's own error output."""
    command = [_tool(args[0]), *args[1:]]
    env = {**os.environ, "LC_ALL": "C", "MTOOLS_SKIP_CHECK": "1", "DEBIAN_FRONTEND": "noninteractive"}
    completed = subprocess.run(
        command, cwd=cwd, input=stdin, capture_output=True, text=True, env=env, check=False
    )
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip()[-2000:]
        raise BuildError(f"{' '.join(args)} failed (exit {completed.returncode}): {detail}")
    return completed.stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise cache updates between concurrent builders (test sessions, workers)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- kernel --------------------------------------------------------------------------------------


def kernel_bundle(cache_dir: Path, scratch: Path) -> KernelBundle:
    """The cached kernel bundle for the current cloud kernel, made on first use."""
    with _locked(cache_dir):
        deb = _kernel_deb(cache_dir / "debs")
        modules_key = hashlib.sha256(" ".join(GUEST_MODULES).encode()).hexdigest()[:12]
        directory = cache_dir / "kernels" / f"{deb.stem}-{modules_key}"
        if not (directory / "load-order").is_file():
            _unpack_bundle(deb, directory, scratch)
    version = (directory / "version").read_text().strip()
    package_version = (directory / "package-version").read_text().strip()
    return KernelBundle(directory=directory, version=version, package_version=package_version)


def _kernel_deb(debs: Path) -> Path:
    """The kernel package file: reused from the cache, downloaded only when it is not there.

    Offline first: with the package list present and the named package cached, no network is
    touched; with no list but some cached kernel, that kernel is used.
    """
    debs.mkdir(parents=True, exist_ok=True)
    package = _kernel_package_name()
    if package is not None:
        cached = sorted(debs.glob(f"{package}_*.deb"))
        return cached[-1] if cached else _download(package, debs)
    cached = sorted(debs.glob("linux-image-*-cloud-amd64_*.deb"), key=lambda path: path.stat().st_mtime)
    if cached:
        return cached[-1]
    _run(["apt-get", "update", "-q"])
    package = _kernel_package_name()
    if package is None:
        raise BuildError(
            f"apt knows no {KERNEL_META_PACKAGE} even after apt-get update; "
            "is a Debian amd64 main archive in the apt sources?"
        )
    return _download(package, debs)


def _kernel_package_name() -> str | None:
    """``linux-image-<abi>-cloud-amd64`` from the local package list, or None without one."""
    try:
        listing = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    except BuildError:
        return None
    match = re.search(r"Depends:\s+(linux-image-\S+-cloud-amd64)\b", listing)
    return match.group(1) if match else None


def _download(package: str, debs: Path) -> Path:
    """apt-get download into a private directory, then move in: a cache never holds half a file."""
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as partial_name:
        partial = Path(partial_name)
        try:
            _run(["apt-get", "download", "-q", package], cwd=partial)
        except BuildError:  # a stale list names a file the mirror no longer has
            _run(["apt-get", "update", "-q"])
            _run(["apt-get", "download", "-q", package], cwd=partial)
        downloaded = sorted(partial.glob(f"{package}_*.deb"))
        if not downloaded:
            raise BuildError(f"apt-get download {package} produced no .deb")
        target = debs / downloaded[-1].name
        downloaded[-1].replace(target)
    return target


def _unpack_bundle(deb: Path, directory: Path, scratch: Path) -> None:
    """Unpack the package once and keep only vmlinuz and the modules the guest loads."""
    unpacked = scratch / "kernel-package"
    _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
    kernels = sorted((unpacked / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError(f"{deb.name} contains no boot/vmlinuz-*")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    index = _module_index(unpacked / "lib" / "modules" / version)
    order = _load_order(index, GUEST_MODULES)
    directory.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".bundle-", dir=directory.parent))
    try:
        building.chmod(0o755)
        (building / "modules").mkdir()
        shutil.copyfile(kernels[-1], building / "vmlinuz")
        for name in order:
            (building / "modules" / f"{name}.ko").write_bytes(_module_bytes(index[name]))
        (building / "load-order").write_text("\n".join(order) + "\n")
        (building / "version").write_text(version + "\n")
        package_version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
        (building / "package-version").write_text(package_version + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        building.rename(directory)
    finally:
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(unpacked, ignore_errors=True)


def _module_index(modules_dir: Path) -> dict[str, Path]:
    """Module name (dashes as underscores, like the kernel) → file, for .ko and .ko.xz."""
    index: dict[str, Path] = {}
    for path in modules_dir.rglob("*.ko*"):
        name = path.name.split(".ko", 1)[0].replace("-", "_")
        index[name] = path
    return index


def _module_bytes(path: Path) -> bytes:
    """insmod in busybox wants a plain ELF; Debian 12 ships plain .ko, later releases .ko.xz."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def _load_order(index: dict[str, Path], wanted: Iterable[str]) -> list[str]:
    """Dependencies before dependants, from each module's own ``depends=`` (packages ship no
    modules.dep; depmod runs at install time). Modules this kernel lacks are skipped: they are
    built in or irrelevant, and the init tolerates a missing driver."""
    order: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in order or name not in index:
            return
        if name in trail:
            raise BuildError(f"module dependency cycle: {' → '.join((*trail, name))}")
        for dependency in module_dependencies(_module_bytes(index[name])):
            visit(dependency, (*trail, name))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def module_dependencies(module: bytes) -> list[str]:
    """The ``depends=`` list from a module's ``.modinfo`` ELF section."""
    for entry in _elf_section(module, b".modinfo").split(b"\0"):
        if entry.startswith(b"depends="):
            return [name.replace("-", "_") for name in entry[8:].decode().split(",") if name]
    return []


def _elf_section(elf: bytes, wanted: bytes) -> bytes:
    """The bytes of one named section of a 64-bit little-endian ELF file (kernel modules)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise BuildError("not a 64-bit little-endian ELF file")
    (section_table,) = struct.unpack_from("<Q", elf, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", elf, 0x3A)

    def header(index: int) -> tuple[int, int, int]:
        fields = struct.unpack_from("<IIQQQQIIQQ", elf, section_table + index * entry_size)
        return fields[0], fields[4], fields[5]  # name offset, file offset, size

    names_offset = header(names_index)[1]
    for index in range(count):
        name_at, offset, size = header(index)
        start = names_offset + name_at
        if elf[start : elf.index(b"\0", start)] == wanted:
            return elf[offset : offset + size]
    return b""


# --- initramfs -----------------------------------------------------------------------------------


def _static_busybox() -> Path:
    """The host's busybox, which must be static: the initramfs carries no C library."""
    path = Path(_tool("busybox")).resolve()
    with path.open("rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            raise BuildError(f"{path} is not a 64-bit ELF executable")
        (program_table,) = struct.unpack_from("<Q", header, 0x20)
        entry_size, count = struct.unpack_from("<HH", header, 0x36)
        handle.seek(program_table)
        table = handle.read(entry_size * count)
    pt_interp = 3
    for index in range(count):
        (kind,) = struct.unpack_from("<I", table, index * entry_size)
        if kind == pt_interp:
            raise BuildError(f"{path} is dynamically linked; install busybox-static")
    return path


def _busybox_version(busybox: Path) -> str:
    banner = subprocess.run([str(busybox)], capture_output=True, text=True, check=False).stdout
    match = re.search(r"BusyBox v(\S+)", banner)
    return match.group(1) if match else "unknown"


def _initramfs(busybox: Path, init: str, modules: Sequence[Path]) -> bytes:
    """A gzip'd newc archive: busybox, /init, the modules and their load order."""
    archive = _Cpio()
    for directory in (
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "mnt",
        "mnt/seed",
        "proc",
        "root",
        "run",
        "sys",
        "tmp",
    ):
        archive.directory(directory)
    archive.device("dev/console", major=5, minor=1)  # the kernel opens it before /init runs
    archive.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    archive.file("init", init.encode(), mode=0o755)
    for module in modules:
        archive.file(f"lib/modules/{module.name}", module.read_bytes(), mode=0o644)
    order = "".join(f"{module.stem}\n" for module in modules)
    archive.file("lib/modules/load-order", order.encode(), mode=0o644)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)  # 9: 2x the time, 0.3 % smaller


class _Cpio:
    """Writer for the "newc" cpio format the kernel unpacks; fixed owners and times on purpose."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._inode = 0

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755, b"", nlink=2)

    def file(self, name: str, data: bytes, *, mode: int) -> None:
        self._entry(name, 0o100000 | mode, data)

    def device(self, name: str, *, major: int, minor: int) -> None:
        self._entry(name, 0o020600, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", inode=0)
        return b"".join(self._parts)

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes,
        *,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
        inode: int | None = None,
    ) -> None:
        self._inode += 1
        encoded = name.encode() + b"\0"
        fields = (
            self._inode if inode is None else inode,
            mode,
            0,
            0,
            nlink,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,
        )
        header = b"070701" + b"".join(b"%08x" % value for value in fields)
        self._parts += [header, encoded, _pad4(len(header) + len(encoded)), data, _pad4(len(data))]


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


# --- disk ----------------------------------------------------------------------------------------


def _assemble_disk(raw: Path, vmlinuz: Path, initrd: Path, scratch: Path) -> None:
    """MBR + FAT32 + syslinux on a raw file, without mounting anything."""
    if not _MBR_BIN.is_file():
        raise BuildError(f"{_MBR_BIN} is missing (apt-get install syslinux-common)")
    with raw.open("wb") as handle:
        handle.truncate(_DISK_BYTES)
    _run(["sfdisk", "-q", str(raw)], stdin=f"start={_PARTITION_START_SECTOR}, type=c, bootable\n")
    partition_kib = (_DISK_BYTES - _PARTITION_START_SECTOR * _SECTOR) // 1024
    _run(
        [
            "mkfs.vfat",
            "-F",
            "32",
            "-n",
            "SOVRA-BOOT",
            "--offset",
            str(_PARTITION_START_SECTOR),
            str(raw),
            str(partition_kib),
        ]
    )
    offset = _PARTITION_START_SECTOR * _SECTOR
    _run(["syslinux", "--offset", str(offset), "--install", str(raw)])
    with raw.open("r+b") as handle:
        handle.write(_MBR_BIN.read_bytes()[:_MBR_BOOT_CODE_BYTES])
    config = scratch / "syslinux.cfg"
    config.write_text(_syslinux_config())
    kernel = scratch / "vmlinuz"
    shutil.copyfile(vmlinuz, kernel)
    _run(["mcopy", "-i", f"{raw}@@{offset}", str(kernel), str(initrd), str(config), "::"])


def _syslinux_config() -> str:
    return (
        "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\n"
        f"LABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND {KERNEL_COMMAND_LINE}\n"
    )


def _convert_to_qcow2(raw: Path, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    try:
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(partial)])
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)


def _virtual_size(image: Path) -> int:
    info = json.loads(_run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(image)]))
    return int(info["virtual-size"])


# --- the guest's /init ---------------------------------------------------------------------------


def guest_init(hostname_default: str) -> str:
    """The tiny guest's ``/init`` (busybox sh), with its fallback host name filled in."""
    if not _HOSTNAME_RE.fullmatch(hostname_default):
        raise BuildError(f"hostname_default {hostname_default!r} is not a valid host name")
    return (
        _GUEST_INIT.replace("@HOSTNAME_DEFAULT@", hostname_default)
        .replace("@CLOUD_INIT_VERSION@", CLOUD_INIT_VERSION)
        .replace("@OS_VERSION@", OS_VERSION)
    )


_GUEST_INIT = r"""#!/bin/busybox sh
# /init of the Sovra tiny guest, generated by sovra.images.build. PID 1 never exits on purpose.
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

HOSTNAME_DEFAULT='@HOSTNAME_DEFAULT@'
SEED_DIR=/mnt/seed
STATE=/run/cloud

say() { echo "sovra-init: $*"; }

load_modules() {
    for module in $(cat /lib/modules/load-order); do
        insmod "/lib/modules/$module.ko" 2>/dev/null
    done
}

# The events of an input device are queued only for readers that have it open, so the device is
# opened here, before the ready lines: a power-button press right after them is not lost.
watch_power_button() {
    for event in /sys/class/input/event*; do
        [ "$(cat "$event/device/name" 2>/dev/null)" = "Power Button" ] || continue
        exec 3<"/dev/input/${event##*/}"
        (head -c 1 <&3 >/dev/null; say "power button pressed, powering off"; sync; poweroff -f) &
        exec 3<&-
    done
}

seed_device() {
    for label in cidata CIDATA; do  # FAT labels are often upper case
        device=$(findfs "LABEL=$label" 2>/dev/null) && { echo "$device"; return 0; }
    done
    for device in /dev/sr* /dev/vd* /dev/sd* /dev/hd*; do
        [ -b "$device" ] || continue
        mount -r "$device" "$SEED_DIR" 2>/dev/null || continue
        found=no; [ -f "$SEED_DIR/meta-data" ] && found=yes
        umount "$SEED_DIR"
        [ $found = yes ] && { echo "$device"; return 0; }
    done
    return 1
}

# "key: value" from a flat YAML file, without quotes or a trailing CR.
yaml_value() {
    sed -n "s/^$1:[[:space:]]*//p" "$2" | head -n 1 | tr -d '\r' \
        | sed -e 's/[[:space:]]*$//' -e "s/^[\"']//" -e "s/[\"']\$//"
}

# The items of the top-level block list "$1:" in file "$2", one per line.
yaml_list() {
    tr -d '\r' <"$2" | awk -v key="$1:" '
        $0 ~ "^" key "[[:space:]]*$" { inside = 1; next }
        inside && /^[[:space:]]*-[[:space:]]/ { sub(/^[[:space:]]*-[[:space:]]*/, ""); print; next }
        inside && /^[^[:space:]#]/ { inside = 0 }
    ' | sed -e 's/[[:space:]]*$//' -e "s/^[\"']//" -e "s/[\"']\$//"
}

# Like ssh-keygen -l: SHA256 of the key blob, base64 without padding.
fingerprint() {
    digest=$(echo "$1" | base64 -d 2>/dev/null | sha256sum | cut -d' ' -f1)
    echo "SHA256:$(echo "$digest" | xxd -r -p | base64 | tr -d '=\n')"
}

# $1: the list's key (ssh_authorized_keys in user-data, public-keys in meta-data); $2: the file.
install_ssh_keys() {
    yaml_list "$1" "$2" >"$STATE/ssh-keys"
    [ -s "$STATE/ssh-keys" ] || return 0
    mkdir -p /root/.ssh && chmod 700 /root/.ssh
    cat "$STATE/ssh-keys" >>/root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
    echo "ci-info: Authorized keys from /root/.ssh/authorized_keys for user root"
    while read -r type blob comment; do
        echo "ci-info: $type $(fingerprint "$blob") ${comment:--}"
    done </root/.ssh/authorized_keys
}

set_hostname() {
    hostname "$1" && echo "$1" >/etc/hostname
}

run_user_data() {
    user_data=$SEED_DIR/user-data
    [ -s "$user_data" ] || return 0
    first_line=$(head -n 1 "$user_data" | tr -d '\r')
    case "$first_line" in
        '#cloud-config'*)
            name=$(yaml_value hostname "$user_data")
            [ -n "$name" ] && set_hostname "$name"
            install_ssh_keys ssh_authorized_keys "$user_data" ;;
        '#!'*)
            cp "$user_data" "$STATE/user-script" && chmod 700 "$STATE/user-script"
            interpreter=${first_line#\#!}; interpreter=${interpreter%% *}
            if [ -x "$interpreter" ]; then "$STATE/user-script"; else sh "$STATE/user-script"; fi
            say "user-data script exited with status $?" ;;
        *) say "user-data ignored (neither #cloud-config nor #!)" ;;
    esac
}

# Like cloud-init: the meta-data host name first, then user-data (#cloud-config "hostname:"
# overrides it; a #! script runs with it already set), then the "finished" line.
cloud_init() {
    mkdir -p "$STATE"
    set_hostname "$HOSTNAME_DEFAULT"
    datasource=None
    if device=$(seed_device) && mount -r "$device" "$SEED_DIR"; then
        datasource="NoCloud [seed=$device]"
        instance_id=$(yaml_value instance-id "$SEED_DIR/meta-data")
        echo "${instance_id:-iid-unknown}" >"$STATE/instance-id"
        say "instance-id ${instance_id:-unknown} from $device"
        name=$(yaml_value local-hostname "$SEED_DIR/meta-data")
        [ -n "$name" ] && set_hostname "$name"
        install_ssh_keys public-keys "$SEED_DIR/meta-data"
        run_user_data
        umount "$SEED_DIR"
    fi
    echo "Cloud-init v. @CLOUD_INIT_VERSION@ finished at $(cut -d' ' -f1 /proc/uptime) seconds." \
         "Datasource $datasource."
}

load_modules
watch_power_button
cloud_init
echo
echo "Sovra tiny @OS_VERSION@ $(hostname) ttyS0"
echo
echo "$(hostname) login: "
while :; do sleep 3600; done
"""
