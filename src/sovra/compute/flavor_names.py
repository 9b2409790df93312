"""SCS flavor names (scs-0100 v3): parse and check them, generate canonical ones, and derive the
``scs:`` extra specs that scs-0103 expects of a flavor with that name.

The v3 grammar (the v2 syntax; every part after the RAM is optional, in this order)::

    SCS-<N><L|V|T|C>[i]-<RAM>[u][o]          CPUs, CPU type, insecure; RAM GiB (whole or half), no ECC,
                                              oversubscribed
        [-[<M>x][<SIZE>][n|h|s|p]]            root disk: M disks of SIZE GB of a type; a bare '-' lets
                                              the cloud choose; no '-' at all means no root disk
        [_kvm|_chy|_xen|_vmw|_hyv|_bms]       hypervisor
        [_hwv]                                hardware (nested) virtualisation in the guest
        [_<i|z|a|r>[GEN][h|hh|hhh]]           CPU vendor, generation, all-core frequency class
        [_<G|g><N|A|I>[GEN][-<CU>[h|hh][-<VRAM>[h|hh]]]]   GPU: pass-through or virtual, vendor, generation,
                                              SMs/CUs/EUs and VRAM GiB, each with faster variants
        [_ib]                                 Infiniband

Version 1 names use ``:`` where v3 uses ``-`` and ``-`` where v3 uses ``_``
(``SCS-16T:64:3x10s-GNa:64-ib``); they are accepted with a warning. So are the v2-only disk forms with
a disk count but no size (``-3x``, ``-3xs``), which v3 dropped.

This is our own implementation of the standard; it agrees with the SCS reference parser
(``Tests/iaas/scs_0100_flavor_naming/flavor_names.py``) on every name the standard allows. Where the
reference is looser (leading zeros, ``4.0``, an explicit generation 0, ``1x``) the name is accepted
with a warning that shows its canonical form. Where it is wrong, this parser follows the grammar: a
GPU part without a CU count may be followed by ``_ib`` (``SCS-4C-16_GNa_ib``), and a disk count
needs a size in v3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

PREFIX = "SCS-"
MAX_NUMBER = 10**9
"""Counts and sizes above this are refused as implausible (they would only come from typos)."""
MAX_DISKS = 32
"""Each disk gets its own ``scs:diskN-type`` extra spec; more disks than this are refused."""

CPU_TYPES = {"L": "crowded-core", "V": "shared-core", "T": "dedicated-thread", "C": "dedicated-core"}
"""CPU type letter to the value of ``scs:cpu-type``."""
CPU_TYPE_MEANINGS = {
    "L": "heavily oversubscribed vCPU",
    "V": "oversubscribed vCPU",
    "T": "dedicated hyperthread",
    "C": "dedicated core",
}
DISK_TYPES = {"n": "network", "h": "hdd", "s": "ssd", "p": "nvme"}
"""Disk type letter to the value of ``scs:diskN-type``; an unspecified type counts as network."""
DISK_TYPE_MEANINGS = {"n": "network", "h": "local HDD", "s": "local SSD", "p": "local NVMe", "": "any"}
HYPERVISORS = {
    "kvm": "KVM",
    "chy": "Cloud Hypervisor",
    "xen": "Xen",
    "vmw": "VMware",
    "hyv": "Hyper-V",
    "bms": "bare metal",
}
CPU_VENDORS = {"i": "Intel", "z": "AMD", "a": "ARM", "r": "RISC-V"}
CPU_GENERATIONS: dict[str, tuple[str, ...]] = {
    "i": (
        "pre-Skylake",
        "Skylake",
        "Cascade Lake",
        "Ice Lake",
        "Sapphire Rapids",
        "Sierra Forest",
        "Granite Rapids",
    ),
    "z": ("pre-Zen", "Zen 1", "Zen 2", "Zen 3", "Zen 4", "Zen 5", "Zen 6"),
    "a": (
        "pre-A76",
        "A76/Neoverse N1",
        "A78/X1/Neoverse V1",
        "A71x/Neoverse N2/V2",
        "AmpereOne",
        "A72x/N3/V3",
    ),
    "r": ("unspecified",),
}
"""Per vendor, the generation names by number; the number is the index."""
CPU_FREQUENCIES = {"": "", "h": ">2.75 GHz", "hh": ">3.25 GHz", "hhh": ">3.75 GHz"}
GPU_KINDS = {"G": "pass-through", "g": "virtual"}
GPU_VENDORS = {"N": "Nvidia", "A": "AMD", "I": "Intel"}
GPU_UNITS = {"N": "SMs", "A": "CUs", "I": "EUs"}
GPU_GENERATIONS: dict[str, dict[str, str]] = {
    "N": {
        "f": "Fermi",
        "k": "Kepler",
        "m": "Maxwell",
        "p": "Pascal",
        "v": "Volta",
        "t": "Turing",
        "a": "Ampere",
        "l": "Ada Lovelace",
        "g": "Grace Hopper",
        "b": "Blackwell",
        "u": "Blackwell Ultra",
    },
    "A": {
        "0.4": "GCN 4",
        "0.5": "GCN 5",
        "1": "CDNA 1",
        "1.1": "RDNA 1",
        "2": "CDNA 2",
        "2.1": "RDNA 2",
        "3": "CDNA 3",
        "3.1": "RDNA 3",
        "3.5": "RDNA 3.5",
        "4": "CDNA 4",
        "4.1": "RDNA 4",
        "5": "UDNA",
        "5.1": "RDNA 5",
    },
    "I": {"0.9": "Gen9", "0.95": "Gen9.5", "1": "Xe DG1", "2": "Xe2", "3": "Arc DG2", "4": "Battlemage"},
}
GPU_SPEEDS = ("", "h", "hh")
"""Modifiers of the CU count (higher clock) and of the VRAM (higher bandwidth)."""


class FlavorNameError(ValueError):
    """A name that is not a valid SCS flavor name; the message names the part and where it is."""

    def __init__(self, problem: str, name: str | None = None) -> None:
        super().__init__(f"{name}: {problem}" if name else problem)
        self.problem = problem
        self.name = name


class Syntax(StrEnum):
    V3 = "v3"
    V2 = "v2"  # v3 syntax plus a disk count without size
    V1 = "v1"  # ':' and '-' as separators


@dataclass(frozen=True)
class _Separators:
    part: str  # between CPU, RAM, disk and inside a GPU part
    extension: str  # before each extension


_V3 = _Separators("-", "_")
_V1 = _Separators(":", "-")


def _ram_text(ram_gib: float) -> str:
    return f"{ram_gib:.0f}" if float(ram_gib).is_integer() else f"{ram_gib:.1f}"


@dataclass(frozen=True)
class Disk:
    """``count`` disks of ``size_gb`` (None: the cloud picks, at least the image's min_disk) of ``type``
    (``""``: unspecified)."""

    count: int = 1
    size_gb: int | None = None
    type: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_DISKS:
            raise FlavorNameError(f"disk count {self.count} must be between 1 and {MAX_DISKS}")
        if self.size_gb is not None and self.size_gb < 1:
            raise FlavorNameError(f"disk size {self.size_gb} must be at least 1 GB (or left out)")
        if self.type not in DISK_TYPE_MEANINGS:
            raise FlavorNameError(f"{self.type!r} is not a disk type: use n, h, s or p")

    def text(self) -> str:
        count = f"{self.count}x" if self.count != 1 else ""
        size = str(self.size_gb) if self.size_gb is not None else ""
        return f"{count}{size}{self.type}"

    @property
    def v3(self) -> bool:
        """v3 dropped a count without a size (``3x``, ``3xs``)."""
        return self.count == 1 or self.size_gb is not None


@dataclass(frozen=True)
class CpuBrand:
    """CPU vendor, generation (0: old or unspecified) and all-core frequency class."""

    vendor: str
    generation: int = 0
    frequency: str = ""

    def __post_init__(self) -> None:
        if self.vendor not in CPU_VENDORS:
            raise FlavorNameError(f"{self.vendor!r} is not a CPU vendor: use i, z, a or r")
        known = CPU_GENERATIONS[self.vendor]
        if not 0 <= self.generation < len(known):
            raise FlavorNameError(
                f"CPU generation {self.generation} is not a known {CPU_VENDORS[self.vendor]} generation "
                f"(0-{len(known) - 1})"
            )
        if self.frequency not in CPU_FREQUENCIES:
            raise FlavorNameError(f"CPU frequency {self.frequency!r} must be h, hh or hhh")

    def text(self) -> str:
        return f"{self.vendor}{self.generation or ''}{self.frequency}"


@dataclass(frozen=True)
class Gpu:
    """A GPU: ``kind`` G (pass-through) or g (virtual), vendor, generation (``""``: unspecified),
    compute units (SMs, CUs or EUs) and VRAM in GiB, each optionally with a faster variant."""

    kind: str
    vendor: str
    generation: str = ""
    compute_units: int | None = None
    unit_speed: str = ""
    vram_gib: int | None = None
    vram_speed: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GPU_KINDS:
            raise FlavorNameError(f"{self.kind!r} is not a GPU kind: use G (pass-through) or g (virtual)")
        if not self.vendor:
            raise FlavorNameError(f"the GPU vendor letter is missing after {self.kind}: use N, A or I")
        if self.vendor not in GPU_VENDORS:
            raise FlavorNameError(
                f"{self.vendor!r} is not a GPU vendor: use N (Nvidia), A (AMD) or I (Intel) after {self.kind}"
            )
        known = GPU_GENERATIONS[self.vendor]
        if self.generation and self.generation not in known:
            raise FlavorNameError(
                f"{self.generation!r} is not a known {GPU_VENDORS[self.vendor]} GPU generation "
                f"({', '.join(known)})"
            )
        for value, what in ((self.compute_units, "GPU compute unit count"), (self.vram_gib, "GPU VRAM")):
            if value is not None and value < 1:
                raise FlavorNameError(f"{what} {value} must be at least 1")
        if self.unit_speed not in GPU_SPEEDS or self.vram_speed not in GPU_SPEEDS:
            raise FlavorNameError("GPU speed modifiers are h or hh")
        if self.compute_units is None and (self.vram_gib is not None or self.unit_speed):
            raise FlavorNameError("GPU VRAM and speed need the compute unit count before them")
        if self.vram_gib is None and self.vram_speed:
            raise FlavorNameError("the GPU VRAM speed modifier needs a VRAM size")

    def text(self, separator: str = "-") -> str:
        parts = [f"{self.kind}{self.vendor}{self.generation}"]
        if self.compute_units is not None:
            parts.append(f"{self.compute_units}{self.unit_speed}")
        if self.vram_gib is not None:
            parts.append(f"{self.vram_gib}{self.vram_speed}")
        return separator.join(parts)


@dataclass(frozen=True)
class FlavorName:
    """An SCS flavor name, decoded. ``str()`` is its canonical v3 form."""

    cpus: int
    cpu_type: str
    ram_gib: float
    cpu_insecure: bool = False
    ram_no_ecc: bool = False
    ram_oversubscribed: bool = False
    disk: Disk | None = None
    hypervisor: str | None = None
    hardware_virtualization: bool = False
    cpu_brand: CpuBrand | None = None
    gpu: Gpu | None = None
    infiniband: bool = False

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise FlavorNameError(f"CPU count {self.cpus} must be at least 1")
        if self.cpu_type not in CPU_TYPES:
            raise FlavorNameError(f"{self.cpu_type!r} is not a CPU type: use L, V, T or C")
        if self.ram_gib <= 0 or not float(self.ram_gib * 2).is_integer():
            raise FlavorNameError(f"RAM {self.ram_gib!r} must be a positive whole or half GiB")
        if self.hypervisor is not None and self.hypervisor not in HYPERVISORS:
            raise FlavorNameError(f"{self.hypervisor!r} is not a hypervisor: use {', '.join(HYPERVISORS)}")

    def __str__(self) -> str:
        return self.generate()

    @property
    def ram_mib(self) -> int:
        return int(self.ram_gib * 1024)

    def generate(self) -> str:
        """The canonical v3 name: integers without decimals, half GiB with one, no ``1x``, no
        generation 0."""
        return _render(self, _V3)

    def v1_name(self) -> str:
        """The same name in the deprecated v1 syntax."""
        return _render(self, _V1)

    def shorten(self) -> FlavorName:
        """The short name the standard expects every provider to offer as well: without hypervisor,
        ``_hwv``, x86 vendor details and GPU speed modifiers; ARM and RISC-V keep their vendor
        letter, which states the architecture."""
        brand = self.cpu_brand
        if brand is not None:
            brand = None if brand.vendor in ("i", "z") else CpuBrand(brand.vendor)
        gpu = self.gpu and replace(self.gpu, unit_speed="", vram_speed="")
        return replace(self, hypervisor=None, hardware_virtualization=False, cpu_brand=brand, gpu=gpu)

    def extra_specs(self) -> dict[str, str]:
        """The ``scs:`` extra specs scs-0103 expects: ``scs:cpu-type``, ``scs:diskN-type`` per disk (an
        unspecified type counts as network) and ``scs:name-v1``... holding every name variant (long and
        short, v3 and v1), longest first, v1 before v3 when equally long."""
        specs = {"scs:cpu-type": CPU_TYPES[self.cpu_type]}
        if self.disk is not None:
            for index in range(self.disk.count):
                specs[f"scs:disk{index}-type"] = DISK_TYPES.get(self.disk.type, "network")
        for number, variant in enumerate(self.name_variants(), start=1):
            specs[f"scs:name-v{number}"] = variant
        return specs

    def name_variants(self) -> list[str]:
        short = self.shorten()
        variants = {
            (self.generate(), Syntax.V3),
            (self.v1_name(), Syntax.V1),
            (short.generate(), Syntax.V3),
            (short.v1_name(), Syntax.V1),
        }
        v1_first = {Syntax.V1: 0, Syntax.V3: 1}
        ordered = sorted(variants, key=lambda item: (-len(item[0]), v1_first[item[1]], item[0]))
        return [text for text, _ in ordered]

    def describe(self) -> str:
        """What the name promises, in words."""
        insecure = " (insecure: mitigations missing)" if self.cpu_insecure else ""
        cpu = f"{self.cpus} {CPU_TYPE_MEANINGS[self.cpu_type]}{'s' if self.cpus > 1 else ''}{insecure}"
        if self.cpu_brand is not None:
            cpu += f" on {_brand_words(self.cpu_brand)}"
        ram_notes = [
            n for n, on in (("no ECC", self.ram_no_ecc), ("oversubscribed", self.ram_oversubscribed)) if on
        ]
        ram = f"{_ram_text(self.ram_gib)} GiB RAM" + (f" ({', '.join(ram_notes)})" if ram_notes else "")
        parts = [cpu, ram, _disk_words(self.disk)]
        if self.hypervisor is not None:
            parts.append(f"hypervisor {HYPERVISORS[self.hypervisor]}")
        if self.hardware_virtualization:
            parts.append("hardware virtualisation in the guest")
        if self.gpu is not None:
            parts.append(_gpu_words(self.gpu))
        if self.infiniband:
            parts.append("Infiniband")
        return ", ".join(parts)


def _brand_words(brand: CpuBrand) -> str:
    words = CPU_VENDORS[brand.vendor]
    if brand.generation:
        words += f" {CPU_GENERATIONS[brand.vendor][brand.generation]}"
    if brand.frequency:
        words += f" ({CPU_FREQUENCIES[brand.frequency]} all-core)"
    return words


def _disk_words(disk: Disk | None) -> str:
    if disk is None:
        return "no root disk (boot from a volume)"
    kind = DISK_TYPE_MEANINGS[disk.type]
    size = f"{disk.size_gb} GB" if disk.size_gb is not None else "image-sized"
    count = f"{disk.count} x " if disk.count != 1 else ""
    return f"{count}{size} root disk ({kind} storage)"


def _gpu_words(gpu: Gpu) -> str:
    words = f"{GPU_KINDS[gpu.kind]} {GPU_VENDORS[gpu.vendor]}"
    if gpu.generation:
        words += f" {GPU_GENERATIONS[gpu.vendor][gpu.generation]}"
    words += " GPU"
    if gpu.compute_units is not None:
        faster = " (higher clock)" if gpu.unit_speed else ""
        words += f" with {gpu.compute_units} {GPU_UNITS[gpu.vendor]}{faster}"
    if gpu.vram_gib is not None:
        faster = " (high bandwidth)" if gpu.vram_speed else ""
        words += f" and {gpu.vram_gib} GiB VRAM{faster}"
    return words


def _render(name: FlavorName, separators: _Separators) -> str:
    part, extension = separators.part, separators.extension
    text = (
        f"{PREFIX}{name.cpus}{name.cpu_type}{'i' if name.cpu_insecure else ''}{part}{_ram_text(name.ram_gib)}"
    )
    text += ("u" if name.ram_no_ecc else "") + ("o" if name.ram_oversubscribed else "")
    if name.disk is not None:
        text += part + name.disk.text()
    extensions = [
        name.hypervisor,
        "hwv" if name.hardware_virtualization else None,
        name.cpu_brand.text() if name.cpu_brand else None,
        name.gpu.text(part) if name.gpu else None,
        "ib" if name.infiniband else None,
    ]
    return text + "".join(extension + e for e in extensions if e is not None)


@dataclass(frozen=True)
class ParsedName:
    """The outcome of :func:`parse`: the decoded name, the syntax it was written in, and warnings
    (deprecated syntax, a non-canonical spelling, discouraged choices) for the caller to show."""

    text: str
    name: FlavorName
    syntax: Syntax
    warnings: tuple[str, ...] = ()


def is_scs_name(text: str) -> bool:
    """Whether ``text`` claims to be an SCS name (and so must follow scs-0100)."""
    return text.startswith(PREFIX)


def parse(text: str) -> ParsedName:
    """Decode an SCS flavor name in v3 syntax, or in v2 or v1 syntax with a warning.

    Raises :class:`FlavorNameError` naming the part that is wrong.
    """
    if not is_scs_name(text):
        raise FlavorNameError("not an SCS flavor name: SCS names start with 'SCS-' (case-sensitive)", text)
    v1 = ":" in text  # a v3 name never holds ':'; every v1 name does (between CPU and RAM)
    try:
        name = _Parser(text, _V1 if v1 else _V3).parse()
    except FlavorNameError as exc:
        raise FlavorNameError(exc.problem, text) from None
    syntax = Syntax.V1 if v1 else (Syntax.V3 if name.disk is None or name.disk.v3 else Syntax.V2)
    return ParsedName(text, name, syntax, tuple(_warnings(text, name, syntax)))


def _warnings(text: str, name: FlavorName, syntax: Syntax) -> list[str]:
    found = []
    if syntax is Syntax.V1:
        found.append(f"v1 syntax (':' and '-' as separators) is deprecated; the v3 name is '{name}'")
    if name.disk is not None and not name.disk.v3:
        found.append(
            f"a disk count without a size ('{name.disk.text()}') is v2 syntax, dropped in scs-0100 v3; "
            "give a size, e.g. 3x10s"
        )
    written = name.v1_name() if syntax is Syntax.V1 else name.generate()
    if written != text:
        found.append(f"'{text}' is not written canonically; write '{written}'")
    if name.ram_gib >= 10 and not float(name.ram_gib).is_integer():
        found.append("half-GiB RAM sizes of 10 GiB or more are discouraged by scs-0100")
    return found


_DIGITS = re.compile(r"\d*")
_RAM = re.compile(r"[0-9.]*")
_RAM_SUFFIX = re.compile(r"[a-z]*")
_DISK = re.compile(r"(?:(?P<count>\d+)x)?(?P<size>[0-9.]*)(?P<type>.*)", re.DOTALL)
_CPU_BRAND = re.compile(r"(?P<vendor>[izar])(?P<generation>\d*)(?P<frequency>h*)")
_EXTENSION_ORDER = ("hypervisor", "_hwv", "CPU", "GPU", "_ib")


class _Parser:
    """One pass over a name in one syntax. Errors carry the problem; :func:`parse` adds the name."""

    def __init__(self, text: str, separators: _Separators) -> None:
        self.text = text
        self.sep = separators
        self.pos = len(PREFIX)

    def _before(self) -> str:
        return self.text[: self.pos]

    def _number(self, digits: str, what: str) -> int:
        value = int(digits)
        if value > MAX_NUMBER:
            raise FlavorNameError(f"{what} {digits} is implausibly large")
        return value

    def parse(self) -> FlavorName:
        cpus, cpu_type, insecure = self._cpu()
        ram, no_ecc, oversubscribed = self._ram()
        disk = self._disk()
        extensions = self._extensions()
        return FlavorName(
            cpus=cpus,
            cpu_type=cpu_type,
            cpu_insecure=insecure,
            ram_gib=ram,
            ram_no_ecc=no_ecc,
            ram_oversubscribed=oversubscribed,
            disk=disk,
            **extensions,
        )

    def _cpu(self) -> tuple[int, str, bool]:
        digits = _DIGITS.match(self.text, self.pos)
        assert digits is not None  # \d* always matches
        if not digits.group():
            raise FlavorNameError("the CPU count is missing after 'SCS-' (e.g. SCS-2V-4)")
        cpus = self._number(digits.group(), "CPU count")
        if cpus < 1:
            raise FlavorNameError(f"CPU count {digits.group()} must be at least 1")
        self.pos = digits.end()
        letter, following = self.text[self.pos : self.pos + 1], self.text[self.pos + 1 : self.pos + 2]
        if letter == "i" and following in CPU_TYPES:
            raise FlavorNameError(
                "'i' (insecure) must follow the CPU type letter: "
                f"write {cpus}{following}i, not {cpus}i{following}"
            )
        if letter not in CPU_TYPES:
            raise FlavorNameError(self._cpu_type_problem(letter))
        self.pos += 1
        insecure = self.text[self.pos : self.pos + 1] == "i"
        self.pos += insecure
        return cpus, letter, insecure

    def _cpu_type_problem(self, letter: str) -> str:
        types = "L (heavily oversubscribed), V (oversubscribed), T (dedicated thread) or C (dedicated core)"
        if letter in ("", self.sep.part, self.sep.extension):
            return f"the CPU type letter is missing after '{self._before()}': add {types}"
        if letter.upper() in CPU_TYPES:
            return f"CPU type '{letter}' must be upper case ('{letter.upper()}'): letters are case-sensitive"
        return f"'{letter}' after '{self._before()}' is not a CPU type: use {types}"

    def _ram(self) -> tuple[float, bool, bool]:
        if self.text[self.pos : self.pos + 1] != self.sep.part:
            raise FlavorNameError(f"expected '{self.sep.part}' and the RAM size after '{self._before()}'")
        self.pos += 1
        match = _RAM.match(self.text, self.pos)
        assert match is not None
        text = match.group()
        if not text:
            raise FlavorNameError(f"the RAM size (GiB) is missing after '{self._before()}'")
        try:
            gib = Decimal(text) if re.fullmatch(r"\d+(\.\d+)?", text) else None
        except InvalidOperation:
            gib = None
        if gib is None:
            raise FlavorNameError(f"RAM '{text}' is not a number of GiB")
        if gib > MAX_NUMBER:
            raise FlavorNameError(f"RAM {text} is implausibly large")
        if gib <= 0 or (gib * 2) % 1:
            raise FlavorNameError(f"RAM '{text}' must be a whole or half GiB (e.g. 4 or 3.5), more than 0")
        self.pos = match.end()
        suffix = _RAM_SUFFIX.match(self.text, self.pos)
        assert suffix is not None
        letters = suffix.group()
        if letters not in ("", "u", "o", "uo"):
            if letters == "ou":
                raise FlavorNameError("RAM suffixes 'ou' are in the wrong order: write 'uo'")
            raise FlavorNameError(
                f"'{letters}' after RAM '{text}' is not valid: RAM takes u (no ECC), then o (oversubscribed)"
            )
        self.pos = suffix.end()
        return float(gib), "u" in letters, "o" in letters

    def _disk(self) -> Disk | None:
        if self.text[self.pos : self.pos + 1] != self.sep.part:
            return None
        self.pos += 1
        end = self.text.find(self.sep.extension, self.pos)
        end = len(self.text) if end < 0 else end
        text = self.text[self.pos : end]
        match = _DISK.fullmatch(text)
        assert match is not None  # the last group takes anything
        count, size, kind = match["count"], match["size"], match["type"]
        where = f"disk part '{text}' after '{self._before()}'"
        if size and not size.isdigit():
            raise FlavorNameError(f"disk size '{size}' in the {where} must be whole GB")
        if kind not in ("n", "h", "s", "p", ""):
            raise FlavorNameError(
                f"'{kind}' in the {where} is not a disk type: use n (network), h (local HDD), "
                "s (local SSD) or p (local NVMe)"
            )
        try:
            disk = Disk(
                count=self._number(count, "disk count") if count else 1,
                size_gb=self._number(size, "disk size") if size else None,
                type=kind,
            )
        except FlavorNameError as exc:
            raise FlavorNameError(f"{exc.problem} in the {where}") from None
        self.pos = end
        return disk

    def _extensions(self) -> dict[str, Any]:
        """The extension fields of :class:`FlavorName` that the name sets."""
        found: dict[str, Any] = {}
        if self.pos == len(self.text):
            return found
        if self.text[self.pos] != self.sep.extension:
            raise FlavorNameError(f"extra characters '{self.text[self.pos :]}' after '{self._before()}'")
        last: tuple[int, str] | None = None
        for token in self.text[self.pos + 1 :].split(self.sep.extension):
            rank, field, value = self._extension(token)
            written = self.sep.extension + token
            if last is not None and rank <= last[0]:
                raise FlavorNameError(self._order_problem(written, rank, last))
            found[field] = value
            last = (rank, written)
            self.pos += len(written)
        return found

    def _order_problem(self, written: str, rank: int, last: tuple[int, str]) -> str:
        if rank == last[0]:
            return f"'{written}' is a second {_EXTENSION_ORDER[rank]} part after '{last[1]}': give each once"
        order = ", ".join(_EXTENSION_ORDER)
        return f"'{written}' must come before '{last[1]}': extensions go in the order {order}"

    def _extension(self, token: str) -> tuple[int, str, object]:
        """(rank in the order, FlavorName field, value) of one extension token."""
        if token in HYPERVISORS:
            return 0, "hypervisor", token
        if token == "hwv":
            return 1, "hardware_virtualization", True
        if token == "ib":
            return 4, "infiniband", True
        brand = _CPU_BRAND.fullmatch(token)
        if brand is not None:
            return 2, "cpu_brand", self._cpu_brand(token, brand)
        if token[:1] in GPU_KINDS:
            return 3, "gpu", self._gpu(token)
        if token[:1].isdigit():
            raise FlavorNameError(
                f"CPU generation '{self.sep.extension}{token}' after '{self._before()}' has no vendor "
                f"(generation without vendor): write the vendor letter first, e.g. "
                f"'{self.sep.extension}z{token}'"
            )
        if not token:
            raise FlavorNameError(f"empty extension after '{self._before()}'")
        raise FlavorNameError(
            f"extra characters '{self.sep.extension}{token}' after '{self._before()}': not an extension "
            f"(hypervisor {'/'.join(HYPERVISORS)}, hwv, CPU vendor i/z/a/r, GPU G/g, ib)"
        )

    def _cpu_brand(self, token: str, match: re.Match[str]) -> CpuBrand:
        try:
            generation = self._number(match["generation"], "CPU generation") if match["generation"] else 0
            return CpuBrand(match["vendor"], generation, match["frequency"])
        except FlavorNameError as exc:
            raise FlavorNameError(f"{exc.problem}, in '{self.sep.extension}{token}'") from None

    def _gpu(self, token: str) -> Gpu:
        part = re.escape(self.sep.part)
        shape = re.compile(
            rf"(?P<kind>[gG])(?P<vendor>[A-Za-z]?)(?P<generation>[^{part}h]*)"
            rf"(?:{part}(?P<units>\d+)(?P<unit_speed>h*)(?:{part}(?P<vram>\d+)(?P<vram_speed>h*))?)?"
        )
        where = f"GPU part '{self.sep.extension}{token}'"
        match = shape.fullmatch(token)
        if match is None:
            example = self.sep.part.join(("GNa", "64", "40"))
            raise FlavorNameError(
                f"{where} is malformed: write G or g, the vendor, [generation], "
                f"[{self.sep.part}units[h|hh][{self.sep.part}VRAM GiB[h|hh]]], e.g. {example}"
            )
        try:
            return Gpu(
                kind=match["kind"],
                vendor=match["vendor"],
                generation=match["generation"],
                compute_units=self._number(match["units"], "GPU compute unit count")
                if match["units"]
                else None,
                unit_speed=match["unit_speed"] or "",
                vram_gib=self._number(match["vram"], "GPU VRAM") if match["vram"] else None,
                vram_speed=match["vram_speed"] or "",
            )
        except FlavorNameError as exc:
            raise FlavorNameError(f"{exc.problem}, in {where}") from None
