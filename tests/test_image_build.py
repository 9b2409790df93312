"""The tiny guest builder and the boot test, on real QEMU (TCG) guests.

Six boots at most, each a few seconds: default marker, NoCloud #cloud-config, NoCloud script,
broken image, timeout, cancellation (the last two are cut short on purpose). Every boot also
checks that the boot test left nothing behind: no QEMU, no overlay, the image unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sovra.domain.image import BootTest, ScsMetadata
from sovra.images import qemu_img
from sovra.images.boottest import BootTestResult, boot_test
from sovra.images.build import BuildError, BuildResult, guest_init
from sovra.images.inspection import inspect_file
from sovra.images.nocloud import make_nocloud_seed

pytestmark = pytest.mark.slow


DEFAULT_MARKER = BootTest().marker
BOOT_TIMEOUT = 120.0
MEMORY_MIB = 128


class _Cancelled(Exception):
    pass


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _qemu_processes_for(work_dir: Path) -> list[int]:
    """QEMU processes whose command line names a file under ``work_dir`` (ours, nobody else's)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes()
        except OSError:
            continue
        if b"qemu-system" in argv and str(work_dir).encode() in argv:
            found.append(int(cmdline.parent.name))
    return found


def _boot(image: Path, work_dir: Path, **options: object) -> BootTestResult:
    """boot_test with the suite's defaults, checking afterwards that it left nothing behind."""
    before = _sha256(image)
    arguments: dict[str, object] = {
        "marker": DEFAULT_MARKER,
        "timeout": BOOT_TIMEOUT,
        "memory_mib": MEMORY_MIB,
        "work_dir": work_dir,
        **options,
    }
    try:
        return boot_test(image, "qcow2", **arguments)  # type: ignore[arg-type]
    finally:
        _assert_cleaned_up(image, before, work_dir)


def _assert_cleaned_up(image: Path, sha_before: str, work_dir: Path) -> None:
    assert _qemu_processes_for(work_dir) == []
    leftovers = [path.name for path in work_dir.iterdir() if path.suffix != ".log"]
    assert leftovers == [], "overlay or scratch files left behind"
    assert _sha256(image) == sha_before, "the boot test changed the base image"


def _ssh_public_key(comment: str) -> tuple[str, str]:
    """An OpenSSH public key line and its ``ssh-keygen -l`` style SHA256 fingerprint."""
    public = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    blob = base64.b64decode(public.split()[1])
    fingerprint = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{public} {comment}", f"SHA256:{fingerprint}"


# --- the image ----------------------------------------------------------------------------------


def test_built_image_is_a_standalone_qcow2_our_inspector_accepts(tiny_image_build: BuildResult) -> None:
    result = tiny_image_build
    inspected = inspect_file(result.path, "qcow2")
    assert inspected.format == result.format == "qcow2"
    assert inspected.virtual_size == result.virtual_size == 64 * 1024 * 1024
    assert result.size == result.path.stat().st_size < 32 * 1024 * 1024
    assert result.sha256 == _sha256(result.path)
    report = qemu_img.info(result.path, inspected)  # refuses backing files and data files
    assert report["format"] == "qcow2"
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-cloud-amd64", result.kernel_version)


def test_build_suggests_valid_scs_metadata(tiny_image_build: BuildResult) -> None:
    metadata = ScsMetadata.model_validate(tiny_image_build.metadata)
    assert metadata.architecture == "x86_64"
    assert (metadata.os_distro, metadata.min_disk, metadata.min_ram) == ("sovra-tiny", 1, 128)
    assert (metadata.image_original_user, metadata.replace_frequency) == ("root", "never")
    assert (metadata.provided_until, metadata.uuid_validity, metadata.image_source) == (
        "none",
        "forever",
        "private",
    )
    assert tiny_image_build.kernel_version in metadata.image_description
    assert date.fromisoformat(metadata.image_build_date) <= date.today()


def test_guest_init_refuses_a_bad_default_hostname() -> None:
    assert "HOSTNAME_DEFAULT='web-1'" in guest_init("web-1")
    with pytest.raises(BuildError):
        guest_init("bad'name")


def test_nocloud_seed_is_an_iso_labelled_cidata(tmp_path: Path) -> None:
    seed = make_nocloud_seed(tmp_path / "seed.iso", "iid-1", "alpha", "#cloud-config\n")
    primary_volume_descriptor = seed.read_bytes()[16 * 2048 : 17 * 2048]
    assert primary_volume_descriptor[1:6] == b"CD001"
    assert primary_volume_descriptor[40:72].rstrip(b" ") == b"cidata"
    assert [path.name for path in tmp_path.iterdir()] == ["seed.iso"]
    with pytest.raises(ValueError):
        make_nocloud_seed(tmp_path / "bad.iso", "iid-1", "not a hostname", "")


# --- boots --------------------------------------------------------------------------------------


def test_boots_to_login_with_the_default_marker(tiny_image: Path, tmp_path: Path) -> None:
    checks: list[float] = []
    result = _boot(tiny_image, tmp_path, check=lambda: checks.append(0.0))
    assert result.passed, result.log_tail
    assert result.reason == "marker"
    assert "sovra login:" in result.log_tail
    assert re.search(r"Cloud-init v\. \S+ finished at [\d.]+ seconds\. Datasource None", result.log_tail)
    assert result.log_path is None
    assert 0 < result.seconds < BOOT_TIMEOUT
    assert checks, "check() is called while waiting"


def test_nocloud_cloud_config_sets_hostname_and_ssh_keys(tiny_image: Path, tmp_path: Path) -> None:
    key, fingerprint = _ssh_public_key("alice@alpha")
    user_data = f'#cloud-config\nhostname: alpha\nssh_authorized_keys:\n  - "{key}"\n'
    seed = make_nocloud_seed(tmp_path / "seed" / "seed.iso", "iid-alpha-1", "from-meta-data", user_data)
    result = _boot(tiny_image, tmp_path / "work", seed_iso=seed)
    assert result.passed, result.log_tail
    tail = result.log_tail
    assert "alpha login:" in tail  # #cloud-config's hostname wins over meta-data's local-hostname
    assert f"ci-info: ssh-ed25519 {fingerprint} alice@alpha" in tail
    assert "instance-id iid-alpha-1 from /dev/sr0" in tail
    assert re.search(r"Cloud-init v\. \S+ finished at [\d.]+ seconds\. Datasource NoCloud", tail)


def test_nocloud_user_data_script_runs_with_the_meta_data_hostname(tiny_image: Path, tmp_path: Path) -> None:
    script = '#!/bin/sh\necho "user-script says hello from $(hostname)"\nexit 3\n'
    seed = make_nocloud_seed(tmp_path / "seed" / "seed.iso", "iid-beta", "beta", script)
    result = _boot(tiny_image, tmp_path / "work", seed_iso=seed, marker=r"beta login:")
    assert result.passed, result.log_tail
    assert "user-script says hello from beta" in result.log_tail
    assert "user-data script exited with status 3" in result.log_tail


def test_broken_image_fails_and_keeps_its_console(broken_image: Path, tmp_path: Path) -> None:
    result = _boot(broken_image, tmp_path, keep_log=True)
    assert not result.passed
    assert result.reason.startswith("guest stopped"), result.reason  # the panic ended QEMU: no waiting
    assert result.seconds < BOOT_TIMEOUT / 2
    assert "sovra-broken: this /init exits on purpose" in result.log_tail
    assert "Kernel panic" in result.log_tail
    assert result.log_path is not None and result.log_path.parent == tmp_path
    assert "SYSLINUX" in result.log_path.read_text(errors="replace")
    result.log_path.unlink()


def test_no_marker_within_the_timeout_fails(tiny_image: Path, tmp_path: Path) -> None:
    result = _boot(tiny_image, tmp_path, marker=r"this never appears", timeout=2.0)
    assert not result.passed
    assert result.reason == "timeout"
    assert 2.0 <= result.seconds < 10.0


def test_check_raising_cancels_the_boot(tiny_image: Path, tmp_path: Path) -> None:
    calls: list[int] = []

    def cancel_on_the_fifth_check() -> None:
        calls.append(1)
        if len(calls) == 5:
            raise _Cancelled

    check: Callable[[], None] = cancel_on_the_fifth_check
    with pytest.raises(_Cancelled):
        _boot(tiny_image, tmp_path, check=check)
    assert len(calls) == 5
