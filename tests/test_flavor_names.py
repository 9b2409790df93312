"""SCS flavor names (scs-0100 v3): the standard's own examples, the errors it names, v1 and v2 names,
canonical generation, short names, the scs-0103 extra specs, and round trips over generated names.

Valid and invalid vectors are the examples of Standards/scs-0100-v3-flavor-naming.md, the GPU pieces
of scs-0100-w1, and the expectations in the reference parser's README (SovereignCloudStack/standards).
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sovra.compute.flavor_names import (
    CPU_GENERATIONS,
    GPU_GENERATIONS,
    CpuBrand,
    Disk,
    FlavorName,
    FlavorNameError,
    Gpu,
    Syntax,
    is_scs_name,
    parse,
)

STANDARD_EXAMPLES = [
    # CPU types and insecure
    "SCS-2C-4-10n",
    "SCS-2T-4-10n",
    "SCS-2V-4-10n",
    "SCS-2L-4-10n",
    "SCS-2Li-4-10n",
    # memory
    "SCS-2C-3.5-10n",
    "SCS-2C-4u-10n",
    "SCS-2C-4o-10n",
    "SCS-2C-4uo-10n",
    # disks
    "SCS-2C-4-10s",
    "SCS-2C-4-10s_bms_z3",
    "SCS-2C-4-3x10s",
    "SCS-2C-4-3x10s_bms_z3",
    "SCS-2C-4-10",
    "SCS-2C-4-10_bms_z3",
    "SCS-2C-4-n",
    "SCS-2C-4-",
    "SCS-2C-4-_bms_z3",
    "SCS-2C-4-_bms_z3h_GNa-64_ib",
    "SCS-2C-4-_ib",
    "SCS-2C-4",
    "SCS-2C-4_bms_z3",
    "SCS-2C-4-3x10",
    # hypervisor, hardware virtualisation, CPU vendor, generation and frequency
    "SCS-2C-4-10n_bms",
    "SCS-2C-4-10n_bms_z3h",
    "SCS-2C-4-10_kvm_hwv",
    "SCS-2C-4-10_hwv",
    "SCS-2C-4-10_bms_hwv",
    "SCS-2C-4-10n_z",
    "SCS-2C-4-10n_z3",
    "SCS-2C-4-10n_z3hh",
    "SCS-2C-4-10n_bms_z3hh",
    # the table of proposal examples, and the GPU example
    "SCS-8Ti-32-50p_i1",
    "SCS-1L-1u-5",
    "SCS-16T-64-200s_GNa-72-24_ib",
    "SCS-4C-16-2x200p_a1",
    "SCS-1V-0.5",
    "SCS-16V-64-500s_GNa-14-6h",
    # the reference parser's README
    "SCS-16T-64-3x10s_bms_hwv_i3h_GNa-64_ib",
    "SCS-16T-64",
    # GPUs of scs-0100-w1, and the newer hypervisor and generations
    "SCS-4C-16_GNa-108h-80h",
    "SCS-4C-16_GNg-132-80h",
    "SCS-4C-16_GA3.1-96-48",
    "SCS-4C-16_GI3-128-128h",
    "SCS-4C-16_GNu-160-288h",
    "SCS-4C-16_chy_z6_gA-32hh",
    "SCS-4C-16_i6hhh",
    # the grammar allows _ib after a GPU without CU count (the reference parser refuses it)
    "SCS-4C-16_GNa_ib",
]


@pytest.mark.parametrize("text", STANDARD_EXAMPLES)
def test_the_standards_examples_are_valid_and_canonical(text: str) -> None:
    parsed = parse(text)
    assert parsed.syntax is Syntax.V3 and parsed.warnings == ()
    assert parsed.name.generate() == str(parsed.name) == text


def test_the_decodings_of_the_proposal_examples() -> None:
    insecure = parse("SCS-8Ti-32-50p_i1").name
    assert (insecure.cpus, insecure.cpu_type, insecure.cpu_insecure, insecure.ram_gib) == (8, "T", True, 32)
    assert insecure.disk == Disk(size_gb=50, type="p") and insecure.cpu_brand == CpuBrand("i", 1)
    cheap = parse("SCS-1L-1u-5").name
    assert cheap.cpu_type == "L" and cheap.ram_no_ecc and not cheap.ram_oversubscribed
    assert cheap.disk == Disk(size_gb=5, type="")
    gpu = parse("SCS-16T-64-200s_GNa-72-24_ib").name
    assert gpu.gpu == Gpu("G", "N", "a", compute_units=72, vram_gib=24) and gpu.infiniband
    arm = parse("SCS-4C-16-2x200p_a1").name
    assert arm.disk == Disk(count=2, size_gb=200, type="p") and arm.cpu_brand == CpuBrand("a", 1)
    small = parse("SCS-1V-0.5").name
    assert small.ram_gib == 0.5 and small.ram_mib == 512 and small.disk is None
    bare = parse("SCS-2C-4-").name
    assert bare.disk == Disk() and parse("SCS-2C-4").name.disk is None
    fast = parse("SCS-16V-64-500s_GNa-14-6h").name.gpu
    assert fast == Gpu("G", "N", "a", compute_units=14, vram_gib=6, vram_speed="h")
    assert parse("SCS-2C-4-10_bms_hwv").name.hypervisor == "bms"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # struck through in the standard
        ("SCS-2-4-10n", "the CPU type letter is missing after 'SCS-2'"),
        ("SCS-2iT-4-10n", "'i' (insecure) must follow the CPU type letter: write 2Ti, not 2iT"),
        ("SCS-2C-4ou-10n", "RAM suffixes 'ou' are in the wrong order: write 'uo'"),
        ("SCS-2C-4-1.5n", "disk size '1.5' in the disk part '1.5n' after 'SCS-2C-4-' must be whole GB"),
        ("SCS-2C-4-10_hwv_xen", "'_xen' must come before '_hwv'"),
        # the standard's typo, a generation without vendor (SovereignCloudStack/standards#363)
        ("SCS-2C-4-n_bms_3", "(generation without vendor)"),
        # the reference parser's README
        ("SCS-2T-4_ic", "extra characters '_ic' after 'SCS-2T-4'"),
        ("SCS-2-4", "the CPU type letter is missing"),
        ("SC-2T-4", "not an SCS flavor name"),
        # values outside the tables
        ("SCS-2C-4.3", "RAM '4.3' must be a whole or half GiB"),
        ("SCS-2C-0", "RAM '0' must be a whole or half GiB"),
        ("SCS-2C-4_i7", "CPU generation 7 is not a known Intel generation (0-6)"),
        ("SCS-2C-4_z7", "CPU generation 7 is not a known AMD generation (0-6)"),
        ("SCS-2C-4_a6", "CPU generation 6 is not a known ARM generation (0-5)"),
        ("SCS-2C-4_r1", "CPU generation 1 is not a known RISC-V generation (0-0)"),
        ("SCS-2C-4_z3hhhh", "CPU frequency 'hhhh' must be h, hh or hhh, in '_z3hhhh'"),
        ("SCS-2C-4_GX", "'X' is not a GPU vendor"),
        ("SCS-2C-4_G", "the GPU vendor letter is missing after G"),
        ("SCS-2C-4_GNz", "'z' is not a known Nvidia GPU generation"),
        ("SCS-2C-4_GA3.3", "'3.3' is not a known AMD GPU generation"),
        ("SCS-2C-4_GNah", "GPU part '_GNah' is malformed"),
        ("SCS-2C-4_GNa-0", "GPU compute unit count 0 must be at least 1"),
        ("SCS-2v-4", "CPU type 'v' must be upper case ('V')"),
        ("SCS-2X-4", "'X' after 'SCS-2' is not a CPU type"),
        ("SCS-V-4", "the CPU count is missing after 'SCS-'"),
        ("SCS-0V-4", "CPU count 0 must be at least 1"),
        ("SCS-2V4", "expected '-' and the RAM size after 'SCS-2V'"),
        ("SCS-2V-", "the RAM size (GiB) is missing after 'SCS-2V-'"),
        ("SCS-2V-4.5.5", "RAM '4.5.5' is not a number of GiB"),
        ("SCS-2V-4x", "'x' after RAM '4' is not valid"),
        ("SCS-2C-4-0", "disk size 0 must be at least 1 GB"),
        ("SCS-2C-4-0x10", "disk count 0 must be between 1 and 32"),
        ("SCS-2C-4-33x10", "disk count 33 must be between 1 and 32"),
        ("SCS-2C-4-10q", "'q' in the disk part '10q' after 'SCS-2C-4-' is not a disk type"),
        ("SCS-2C-4_kvm_xen", "'_xen' is a second hypervisor part after '_kvm'"),
        ("SCS-2C-4_ib_ib", "'_ib' is a second _ib part after '_ib'"),
        ("SCS-2C-4_", "empty extension after 'SCS-2C-4'"),
        ("SCS-2C-4__ib", "empty extension after 'SCS-2C-4'"),
        ("SCS-2C-4_qemu", "extra characters '_qemu' after 'SCS-2C-4'"),
        ("SCS-12345678901V-4", "CPU count 12345678901 is implausibly large"),
        # v1 names get the same checks in their own syntax
        ("SCS-2V:4:10n-xen-kvm", "'-kvm' is a second hypervisor part after '-xen'"),
        ("SCS-2iT:4", "'i' (insecure) must follow the CPU type letter"),
    ],
)
def test_invalid_names_say_which_part_is_wrong_and_where(text: str, problem: str) -> None:
    with pytest.raises(FlavorNameError) as raised:
        parse(text)
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).startswith(f"{text}: ") and problem in str(raised.value)
    assert raised.value.name == text


def test_a_v1_name_is_accepted_with_a_warning() -> None:
    long_v2 = "SCS-16T-64-3x10s_bms_hwv_i3h_GNa-64_ib"
    parsed = parse("SCS-16T:64:3x10s-GNa:64-ib")
    assert parsed.syntax is Syntax.V1
    assert parsed.warnings == (
        "v1 syntax (':' and '-' as separators) is deprecated; the v3 name is 'SCS-16T-64-3x10s_GNa-64_ib'",
    )
    # the reference parser's own round-trip vector: the v1 name is the long name, shortened
    assert parsed.name == parse(long_v2).name.shorten()
    assert parse(long_v2).name.v1_name() == "SCS-16T:64:3x10s-bms-hwv-i3h-GNa:64-ib"


@pytest.mark.parametrize("text", ["SCS-2C-4-3x", "SCS-2C-4-3xs", "SCS-2C:4:3xs"])
def test_a_disk_count_without_size_is_v2_and_accepted_with_a_warning(text: str) -> None:
    parsed = parse(text)
    assert parsed.name.disk is not None and parsed.name.disk.count == 3 and parsed.name.disk.size_gb is None
    assert any("is v2 syntax, dropped in scs-0100 v3" in w for w in parsed.warnings)
    assert parsed.syntax is (Syntax.V1 if ":" in text else Syntax.V2)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("SCS-02V-4.0", "SCS-2V-4"),
        ("SCS-2V-4-1x10", "SCS-2V-4-10"),
        ("SCS-2V-4-010s", "SCS-2V-4-10s"),
        ("SCS-4C-16_z0", "SCS-4C-16_z"),
        ("SCS-4C-16_GNa-064", "SCS-4C-16_GNa-64"),
    ],
)
def test_a_non_canonical_spelling_parses_with_its_canonical_form(text: str, canonical: str) -> None:
    parsed = parse(text)
    assert str(parsed.name) == canonical
    assert parsed.warnings == (f"'{text}' is not written canonically; write '{canonical}'",)


def test_half_gib_of_10_gib_or_more_is_discouraged() -> None:
    assert parse("SCS-4V-10.5").warnings == (
        "half-GiB RAM sizes of 10 GiB or more are discouraged by scs-0100",
    )
    assert parse("SCS-4V-9.5").warnings == ()


def test_generation_writes_the_canonical_name() -> None:
    assert FlavorName(2, "V", 4, disk=Disk(size_gb=20, type="s")).generate() == "SCS-2V-4-20s"
    assert str(FlavorName(1, "V", 0.5)) == "SCS-1V-0.5"
    assert str(FlavorName(2, "C", 3.5, disk=Disk(count=1, size_gb=10))) == "SCS-2C-3.5-10"
    assert str(FlavorName(2, "C", 4, cpu_brand=CpuBrand("z", 0, "h"))) == "SCS-2C-4_zh"
    full = FlavorName(
        cpus=16,
        cpu_type="T",
        ram_gib=64,
        cpu_insecure=True,
        ram_no_ecc=True,
        ram_oversubscribed=True,
        disk=Disk(3, 10, "s"),
        hypervisor="bms",
        hardware_virtualization=True,
        cpu_brand=CpuBrand("i", 3, "h"),
        gpu=Gpu("G", "N", "a", 64, "h", 40, "hh"),
        infiniband=True,
    )
    assert str(full) == "SCS-16Ti-64uo-3x10s_bms_hwv_i3h_GNa-64h-40hh_ib"
    assert full.v1_name() == "SCS-16Ti:64uo:3x10s-bms-hwv-i3h-GNa:64h:40hh-ib"


def test_direct_construction_refuses_what_parsing_refuses() -> None:
    with pytest.raises(FlavorNameError, match=r"CPU generation 7 is not a known Intel generation \(0-6\)"):
        CpuBrand("i", 7)
    with pytest.raises(FlavorNameError, match="disk count 0 must be between 1 and 32"):
        Disk(count=0)
    with pytest.raises(FlavorNameError, match="must be a positive whole or half GiB"):
        FlavorName(2, "V", 4.3)
    with pytest.raises(FlavorNameError, match="'Q' is not a CPU type"):
        FlavorName(2, "Q", 4)
    with pytest.raises(FlavorNameError, match="need the compute unit count"):
        Gpu("G", "N", vram_gib=8)


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("SCS-16T-64-3x10s_bms_hwv_i3h_GNa-64_ib", "SCS-16T-64-3x10s_GNa-64_ib"),
        ("SCS-4C-16-2x200p_a1", "SCS-4C-16-2x200p_a"),  # ARM keeps its letter: it is the architecture
        ("SCS-2C-4-10n_bms_z3hh", "SCS-2C-4-10n"),
        ("SCS-16V-64-500s_GNa-14-6h", "SCS-16V-64-500s_GNa-14-6"),
        ("SCS-2Li-4uo-n_kvm_r", "SCS-2Li-4uo-n_r"),
    ],
)
def test_shorten_drops_what_the_standard_drops(text: str, short: str) -> None:
    assert str(parse(text).name.shorten()) == short


def _v1_by_sed(v3_name: str) -> str:
    """The standard's own v3 -> v1 rule: sed -e 's/\\-/:/g' -e 's/_/-/g' -e 's/^SCS:/SCS-/'."""
    v1 = v3_name.replace("-", ":").replace("_", "-")
    return "SCS-" + v1.removeprefix("SCS:")


@pytest.mark.parametrize(
    ("text", "cpu_type", "disk_type"),
    [
        # scs-0103 mandatory and recommended flavors; an unspecified disk type counts as network
        ("SCS-2V-4-20s", "shared-core", "ssd"),
        ("SCS-4V-16-100s", "shared-core", "ssd"),
        ("SCS-1L-1", "crowded-core", None),
        ("SCS-1V-4-10", "shared-core", "network"),
        ("SCS-16V-32-100", "shared-core", "network"),
        ("SCS-1L-1-5", "crowded-core", "network"),
        ("SCS-16V-128", "shared-core", None),
        ("SCS-2T-4-10h", "dedicated-thread", "hdd"),
        ("SCS-2C-4-10p", "dedicated-core", "nvme"),
    ],
)
def test_extra_specs_of_short_names(text: str, cpu_type: str, disk_type: str | None) -> None:
    expected = {"scs:cpu-type": cpu_type}
    if disk_type:
        expected["scs:disk0-type"] = disk_type
    expected |= {"scs:name-v1": _v1_by_sed(text), "scs:name-v2": text}
    assert parse(text).name.extra_specs() == expected


def test_extra_specs_of_a_long_name_list_every_variant_longest_first_v1_first() -> None:
    specs = parse("SCS-16T-64-3x10s_bms_hwv_i3h_GNa-64_ib").name.extra_specs()
    assert specs == {
        "scs:cpu-type": "dedicated-thread",
        "scs:disk0-type": "ssd",
        "scs:disk1-type": "ssd",
        "scs:disk2-type": "ssd",
        "scs:name-v1": "SCS-16T:64:3x10s-bms-hwv-i3h-GNa:64-ib",
        "scs:name-v2": "SCS-16T-64-3x10s_bms_hwv_i3h_GNa-64_ib",
        "scs:name-v3": "SCS-16T:64:3x10s-GNa:64-ib",
        "scs:name-v4": "SCS-16T-64-3x10s_GNa-64_ib",
    }


def test_describe_says_what_the_name_promises() -> None:
    assert parse("SCS-2V-4-20s").name.describe() == (
        "2 oversubscribed vCPUs, 4 GiB RAM, 20 GB root disk (local SSD storage)"
    )
    assert parse("SCS-8Ti-32uo_i1h_gA3.1-96-48h").name.describe() == (
        "8 dedicated hyperthreads (insecure: mitigations missing) on Intel Skylake (>2.75 GHz all-core), "
        "32 GiB RAM (no ECC, oversubscribed), no root disk (boot from a volume), "
        "virtual AMD RDNA 3 GPU with 96 CUs and 48 GiB VRAM (high bandwidth)"
    )


def test_is_scs_name_is_case_sensitive() -> None:
    assert is_scs_name("SCS-2V-4") and not is_scs_name("scs-2V-4") and not is_scs_name("m1.small")


# -- properties over generated names -----------------------------------------------------------------

_disks = st.none() | st.builds(
    Disk,
    count=st.integers(1, 16),
    size_gb=st.integers(1, 100_000),
    type=st.sampled_from(["", "n", "h", "s", "p"]),
)
_brands = st.none() | st.sampled_from(
    [(vendor, generation) for vendor, names in CPU_GENERATIONS.items() for generation in range(len(names))]
).flatmap(
    lambda pair: st.builds(
        CpuBrand, st.just(pair[0]), st.just(pair[1]), st.sampled_from(["", "h", "hh", "hhh"])
    )
)


@st.composite
def _gpus(draw: st.DrawFn) -> Gpu:
    vendor = draw(st.sampled_from(sorted(GPU_GENERATIONS)))
    units = draw(st.none() | st.integers(1, 500))
    vram = draw(st.none() | st.integers(1, 500)) if units is not None else None
    return Gpu(
        kind=draw(st.sampled_from(["G", "g"])),
        vendor=vendor,
        generation=draw(st.sampled_from(["", *GPU_GENERATIONS[vendor]])),
        compute_units=units,
        unit_speed=draw(st.sampled_from(["", "h", "hh"])) if units is not None else "",
        vram_gib=vram,
        vram_speed=draw(st.sampled_from(["", "h", "hh"])) if vram is not None else "",
    )


_names = st.builds(
    FlavorName,
    cpus=st.integers(1, 1024),
    cpu_type=st.sampled_from("LVTC"),
    ram_gib=st.integers(1, 8192).map(lambda halves: halves / 2),
    cpu_insecure=st.booleans(),
    ram_no_ecc=st.booleans(),
    ram_oversubscribed=st.booleans(),
    disk=_disks,
    hypervisor=st.none() | st.sampled_from(["kvm", "chy", "xen", "vmw", "hyv", "bms"]),
    hardware_virtualization=st.booleans(),
    cpu_brand=_brands,
    gpu=st.none() | _gpus(),
    infiniband=st.booleans(),
)


@given(_names)
def test_generate_parse_generate_is_stable(name: FlavorName) -> None:
    text = name.generate()
    parsed = parse(text)
    assert parsed.name == name and parsed.name.generate() == text
    assert parsed.syntax is Syntax.V3
    assert all("discouraged" in warning for warning in parsed.warnings)  # never "not canonical"


@given(_names)
def test_v1_names_round_trip_and_follow_the_standards_rule(name: FlavorName) -> None:
    assert name.v1_name() == _v1_by_sed(name.generate())
    parsed = parse(name.v1_name())
    assert parsed.name == name and parsed.syntax is Syntax.V1


@given(_names)
def test_every_derived_name_variant_means_the_name_or_its_short_form(name: FlavorName) -> None:
    short = name.shorten()
    assert short.shorten() == short
    variants = [v for k, v in name.extra_specs().items() if k.startswith("scs:name-v")]
    assert variants == sorted(variants, key=len, reverse=True)
    assert {parse(v).name for v in variants} <= {name, short}
    assert name.generate() in variants and short.v1_name() in variants


@given(st.text(alphabet=string.digits + "LVTCiuonhspx.-_:kvmyebwzarGgNAI", max_size=30))
def test_any_text_either_parses_to_a_stable_name_or_fails_with_a_flavor_name_error(tail: str) -> None:
    try:
        parsed = parse("SCS-" + tail)
    except FlavorNameError as exc:
        assert str(exc).startswith(f"SCS-{tail}: ")
        return
    assert parse(parsed.name.generate()).name == parsed.name
