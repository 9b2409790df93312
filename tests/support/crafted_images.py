"""Builders for the crafted-image matrix (notes/image-lifecycle.md §1.7), offline and fast.

Each builder writes one small file into a directory, with qemu-img and byte patches, and
returns its path. The row ids (Q1, V4, ...) are the matrix's; rows with a letter suffix
and the E/L/C rows are our additions. Needs ``qemu-img`` (qemu-utils); the ISO rows also
need ``xorriso`` or ``genisoimage`` (see :func:`iso_tool`).
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

#: A host file an attacker would like to read through an image.
HOST_FILE = "/etc/passwd"

#: VMDK: "grain directory at end of stream", the footer marker type, the header size.
VMDK_GD_AT_END = 0xFFFFFFFFFFFFFFFF
VMDK_MARKER_FOOTER = 3
SECTOR = 512


def qemu_img(*args: str) -> None:
    """Run qemu-img for a fixture (never on untrusted input: these are our own files)."""
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def patch(path: Path, offset: int, data: bytes) -> Path:
    """Overwrite ``data`` at ``offset`` in place."""
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    return path


def copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


# -- qcow2 --------------------------------------------------------------------------


def qcow2(d: Path, name: str = "clean.qcow2", size: str = "64M", *options: str) -> Path:
    """Q1: a clean qcow2 (v3 unless ``compat=0.10`` is among ``options``)."""
    path = d / name
    opts = ["-o", ",".join(options)] if options else []
    qemu_img("create", "-q", "-f", "qcow2", *opts, str(path), size)
    return path


def qcow2_with_backing_file(d: Path) -> Path:
    """Q2: backing file is a host file (``-u``: qemu-img does not open it)."""
    path = d / "backing.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", HOST_FILE, "-F", "raw", str(path), "1M")
    return path


def qcow2_with_data_file(d: Path) -> Path:
    """Q3: guest data lives in an external raw file (incompatible-feature bit 2)."""
    path = d / "datafile.qcow2"
    qcow2(d, path.name, "1M", f"data_file={d / 'datafile.raw'}", "data_file_raw=on")
    return path


def qcow2_version(d: Path, version: int) -> Path:
    """Q4: header version patched (u32 BE at 4) to 1 or 4."""
    return patch(qcow2(d, f"v{version}.qcow2", "1M"), 4, struct.pack(">I", version))


def qcow2_feature_byte(d: Path, offset: int, value: int, compat: str = "1.1") -> Path:
    """Q5: one byte of the incompatible-features field (0x48..0x4F) set to ``value``."""
    path = qcow2(d, f"feature-{compat}-{offset:x}-{value:x}.qcow2", "1M", f"compat={compat}")
    return patch(path, offset, bytes([value]))


def qcow2_extended_l2(d: Path) -> Path:
    """Q5b: a real extended-L2 image (feature bit 4), which the inspector refuses."""
    return qcow2(d, "extl2.qcow2", "1M", "extended_l2=on")


def qcow2_encrypted(d: Path) -> Path:
    """Q9: legacy AES-encrypted qcow2 (header crypt_method 1), which oslo does not check."""
    path = d / "encrypted.qcow2"
    secret = ["--object", "secret,id=s0,data=pw"]
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        *secret,
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s0",
        str(path),
        "1M",
    )
    return path


def truncated(src: Path, dst: Path, length: int) -> Path:
    """Q8: the first ``length`` bytes of ``src``."""
    dst.write_bytes(src.read_bytes()[:length])
    return dst


def qcow2_virtual_size(d: Path, size: int) -> Path:
    """Z2: a tiny qcow2 whose header claims ``size`` bytes (u64 BE at 24)."""
    return patch(qcow2(d, "bomb.qcow2", "1M"), 24, struct.pack(">Q", size))


def qcow2_with_data(d: Path, name: str, payload: bytes) -> Path:
    """A clean qcow2 whose guest data is ``payload`` (e.g. another image: it "unfolds")."""
    raw = d / f"{name}.payload"
    raw.write_bytes(payload)
    path = d / name
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    raw.unlink()
    return path


# -- vmdk ---------------------------------------------------------------------------


def vmdk(d: Path, subformat: str, size: str = "64M") -> Path:
    """V1: monolithicSparse or streamOptimized, as qemu-img writes them."""
    path = d / f"{subformat}.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", str(path), size)
    return path


def vmdk_stream_optimized_with_footer(d: Path, tamper: bool = False) -> Path:
    """V2: streamOptimized with the grain directory "at end of stream" and a footer.

    qemu-img 7.2 never writes this layout (VMware tools do), so it is made from qemu's
    file: header gdOffset := GD_AT_END, then footer marker, a copy of the original header
    and an end-of-stream marker. ``tamper`` makes the footer name another descriptor.
    """
    base = vmdk(d, "streamOptimized")
    data = bytearray(base.read_bytes())
    footer = bytearray(data[:SECTOR])
    struct.pack_into("<Q", data, 56, VMDK_GD_AT_END)
    if tamper:
        struct.pack_into("<Q", footer, 36, struct.unpack_from("<Q", footer, 36)[0] + 1)
    marker = struct.pack("<QII", 1, 0, VMDK_MARKER_FOOTER).ljust(SECTOR, b"\0")
    end_of_stream = bytes(SECTOR)
    path = d / ("footer-tampered.vmdk" if tamper else "footer.vmdk")
    path.write_bytes(bytes(data) + marker + bytes(footer) + end_of_stream)
    return path


def vmdk_monolithic_flat(d: Path) -> Path:
    """V3: qemu-img's monolithicFlat (a text descriptor plus a -flat.vmdk file)."""
    return vmdk(d, "monolithicFlat", "1M")


def vmdk_text_descriptor(d: Path, extent: str = "/etc/hosts", create_type: str = "monolithicFlat") -> Path:
    """V4: a bare text descriptor with a FLAT extent on a host file (CVE-2022-47951)."""
    path = d / f"text-{create_type}.vmdk"
    path.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        f'createType="{create_type}"\n\n# Extent description\nRW 2048 FLAT "{extent}" 0\n'
    )
    return path


def vmdk_long_text_descriptor(d: Path) -> Path:
    """V4b: V4's extent after 8 KiB of comments: oslo sees only the first chunk it is fed."""
    path = d / "text-long.vmdk"
    padding = "# padding\n" * 820
    path.write_text(
        '# Disk DescriptorFile\nversion=1\ncreateType="monolithicSparse"\n'
        f'RW 2048 SPARSE "disk.vmdk"\n{padding}RW 2048 FLAT "/etc/hosts" 0\n'
    )
    return path


def vmdk_bad_descriptor_offset(d: Path) -> Path:
    """V5: a sparse VMDK whose header puts the descriptor elsewhere than sector 1."""
    return patch(copy(vmdk(d, "monolithicSparse"), d / "descoffset.vmdk"), 0x1C, struct.pack("<Q", 2))


# -- other formats ------------------------------------------------------------------


def created(d: Path, fmt: str, size: str = "64M", *extra: str) -> Path:
    """A fresh image of qemu driver ``fmt`` (vpc, vhdx, vdi, qed, ...)."""
    path = d / f"created.{fmt}"
    qemu_img("create", "-q", "-f", fmt, *extra, str(path), size)
    return path


def luks_header(d: Path, version: int = 1) -> Path:
    """L1/L2: a LUKS header (v1 or v2) and 64 KiB of "ciphertext".

    Written by hand: ``qemu-img create -f luks`` benchmarks PBKDF2 for seconds. Only
    the inspector reads it (592-byte header: magic, version, cipher, payload offset).
    """
    header = struct.pack(
        ">6sH32s32s32sII20s32sI",
        b"LUKS\xba\xbe",
        version,
        b"aes",
        b"xts-plain64",
        b"sha256",
        8,  # payload offset, in sectors
        64,
        bytes(20),
        bytes(32),
        1000,
    )
    path = d / f"luks{version}.img"
    path.write_bytes(header.ljust(8 * SECTOR, b"\0") + random.Random(version).randbytes(64 * KiB))
    return path


def iso_tool() -> list[str] | None:
    """The argv prefix of an ISO9660 writer, or None (apt: xorriso or genisoimage)."""
    if shutil.which("xorriso"):
        return ["xorriso", "-as", "mkisofs", "-quiet"]
    if shutil.which("genisoimage"):
        return ["genisoimage", "-quiet"]
    return None


def iso(d: Path) -> Path:
    """I1: an ISO9660 image of one small file."""
    tool = iso_tool()
    if tool is None:
        raise RuntimeError("no ISO writer: apt-get install xorriso")
    tree = d / "iso-tree"
    tree.mkdir(exist_ok=True)
    (tree / "hello.txt").write_text("hello\n")
    path = d / "plain.iso"
    subprocess.run([*tool, "-o", str(path), str(tree)], check=True, capture_output=True, timeout=60)
    return path


def iso_with_qcow2_header(d: Path) -> Path:
    """I2: an ISO whose system area (first 32 KiB) starts with a qcow2 header."""
    header = qcow2(d, "i2-header.qcow2", "1M").read_bytes()[: 32 * KiB]
    return patch(copy(iso(d), d / "qcow2-in-iso.iso"), 0, header)


def hybrid_iso(d: Path) -> Path:
    """I3: an ISO with a protective MBR in its system area, like bootable hybrid ISOs."""
    plain = iso(d)
    return patch(copy(plain, d / "hybrid.iso"), 0, mbr_sector(plain.stat().st_size, 0xEE))


def mbr_sector(disk_size: int, os_type: int, boot_flag: int = 0x00) -> bytes:
    """A boot sector with one partition in slot 0 from LBA 1 (CHS 00 02 00) to the end."""
    sector = bytearray(SECTOR)
    entry = struct.pack(
        "<B3BB3BII", boot_flag, 0x00, 0x02, 0x00, os_type, 0xFF, 0xFF, 0xFF, 1, disk_size // SECTOR - 1
    )
    sector[446:462] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def partitioned_raw(d: Path, os_type: int, boot_flag: int = 0x00, size: int = 256 * KiB) -> Path:
    """G1 (0xEE: GPT-protective MBR), G2 (bad boot flag), G3 (classic Linux MBR)."""
    path = d / f"mbr-{os_type:02x}-{boot_flag:02x}.raw"
    path.write_bytes(mbr_sector(size, os_type, boot_flag) + bytes(size - SECTOR))
    return path


def random_bytes(d: Path, size: int, seed: int = 1) -> Path:
    """R1: seeded random bytes (seed 1 happens to start with no known magic)."""
    path = d / f"random-{size}.raw"
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def source_text(d: Path) -> Path:
    """R2: plain source text (this module)."""
    return copy(Path(__file__), d / "source.txt")


def ascii_then_utf8(d: Path) -> Path:
    """E1: 512+ bytes of ASCII, then UTF-8: makes oslo 10.2's VMDK inspector raise AttributeError."""
    path = d / "readme.txt"
    path.write_bytes(b"A plain README line.\n" * 40 + "naïve café\n".encode())
    return path


Builder = Callable[[Path], Path]

#: Every fixture by row id; the ids the matrix uses.
BUILDERS: dict[str, Builder] = {
    "Q1": lambda d: qcow2(d),
    "Q1b": lambda d: qcow2(d, "v2.qcow2", "64M", "compat=0.10"),
    "Q2": qcow2_with_backing_file,
    "Q3": qcow2_with_data_file,
    "Q4-v1": lambda d: qcow2_version(d, 1),
    "Q4-v4": lambda d: qcow2_version(d, 4),
    "Q5-48-01": lambda d: qcow2_feature_byte(d, 0x48, 0x01),
    "Q5-4f-80": lambda d: qcow2_feature_byte(d, 0x4F, 0x80),
    "Q5-4f-10": lambda d: qcow2_feature_byte(d, 0x4F, 0x10),
    "Q5-4f-01": lambda d: qcow2_feature_byte(d, 0x4F, 0x01),
    "Q5-v2-48-01": lambda d: qcow2_feature_byte(d, 0x48, 0x01, compat="0.10"),
    "Q5b": qcow2_extended_l2,
    "Q9": qcow2_encrypted,
    "Q8": lambda d: truncated(qcow2(d, "q8-src.qcow2", "1M"), d / "truncated.qcow2", 100),
    "V1-sparse": lambda d: vmdk(d, "monolithicSparse"),
    "V1-stream": lambda d: vmdk(d, "streamOptimized"),
    "V2": vmdk_stream_optimized_with_footer,
    "V2b": lambda d: vmdk_stream_optimized_with_footer(d, tamper=True),
    "V3": vmdk_monolithic_flat,
    "V4": vmdk_text_descriptor,
    "V4b": vmdk_long_text_descriptor,
    "V5": vmdk_bad_descriptor_offset,
    "D1": lambda d: created(d, "qed"),
    "L1": luks_header,
    "L2": lambda d: luks_header(d, version=2),
    "C1-vhd": lambda d: created(d, "vpc"),
    "C2-vhdx": lambda d: created(d, "vhdx"),
    "C3-vdi": lambda d: created(d, "vdi"),
    "I1": iso,
    "I2": iso_with_qcow2_header,
    "I3": hybrid_iso,
    "G1": lambda d: partitioned_raw(d, 0xEE),
    "G2": lambda d: partitioned_raw(d, 0x83, boot_flag=0x01),
    "G3": lambda d: partitioned_raw(d, 0x83, boot_flag=0x80),
    "R1": lambda d: random_bytes(d, 1 * MiB),
    "R2": source_text,
    "E1": ascii_then_utf8,
    "Z1": lambda d: qcow2(d, "1tib.qcow2", "1T"),
    "Z2": lambda d: qcow2_virtual_size(d, 1 << 60),
}


class CraftedImages:
    """Builds each row's fixture once, in its own subdirectory of ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Path] = {}

    def __getitem__(self, row: str) -> Path:
        if row not in self._built:
            where = self.root / row
            where.mkdir(parents=True, exist_ok=True)
            self._built[row] = BUILDERS[row](where)
        return self._built[row]
