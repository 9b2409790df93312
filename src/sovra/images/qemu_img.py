"""The only place Sovra runs ``qemu-img``.

qemu-img is a full parser of every image format it knows and follows references to other
files, so it must never see bytes that :mod:`sovra.images.inspection` has not passed
(CVE-2022-47951, CVE-2024-32498, CVE-2024-40767). Every function here therefore takes the
:class:`~sovra.images.inspection.InspectionResult` of the file: it is the evidence that
the checks ran, and it supplies the format that is forced with ``-f`` (qemu never probes).
The file must also still be the one inspected (same length) and live somewhere only
Sovra writes, so that it cannot change in between.

Defence in depth on top of the inspector, as in Nova and Glance:

* ``qemu-img info`` must agree: same format, no backing file, no external data file,
  VMDK only monolithicSparse/streamOptimized with no extent other than the file itself,
  virtual size within the policy;
* conversion output is inspected again, so a payload that "unfolds" into another format
  (a qcow2 whose guest data is a qcow2 with a backing file) is caught;
* every run has CPU-time and address-space limits (OSSA-2016-012; Nova's defaults) set
  by ``prlimit(1)`` before qemu-img starts, a wall-clock timeout that kills the whole
  process group, no shell, a fixed environment and stdin closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sovra.domain.errors import SovraError
from sovra.images.inspection import (
    GiB,
    ImageRejected,
    InspectionPolicy,
    InspectionResult,
    RejectCode,
    inspect_file,
    qemu_format,
)

#: Programs run; tests point these at fakes. Looked up on PATH when not absolute.
QEMU_IMG = "qemu-img"
PRLIMIT = "prlimit"

#: VMDK create-types qemu may open (Nova's and Glance's ``vmdk_allowed_types`` default).
VMDK_ALLOWED_TYPES: Final = frozenset({"monolithicSparse", "streamOptimized"})

#: How much of qemu-img's stderr an error carries.
_STDERR_LIMIT: Final = 2000

_CHILD_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Allocation failures as qemu-img and glibc report them under an address-space limit.
_OUT_OF_MEMORY: Final = (
    "Cannot allocate memory",
    "failed to allocate",
    "qemu_thread_create",
    "Out of memory",
)


@dataclass(frozen=True)
class Limits:
    """Resource limits for one qemu-img run.

    ``cpu_seconds`` and ``address_space`` are RLIMIT_CPU and RLIMIT_AS of the child;
    ``timeout`` is wall-clock seconds, after which the process group is killed.
    """

    cpu_seconds: int
    address_space: int
    timeout: float


#: ``info``/``create``: Nova's ``images_cpu_time_limit`` / ``images_address_space_limit``.
INFO_LIMITS: Final = Limits(cpu_seconds=30, address_space=2 * GiB, timeout=60.0)
#: ``convert`` reads and writes every byte (decompressing streamOptimized VMDKs runs at
#: tens of MB/s), so it gets an hour of CPU; memory stays bounded (measured: it works
#: in 512 MiB).
CONVERT_LIMITS: Final = Limits(cpu_seconds=3600, address_space=2 * GiB, timeout=3 * 3600.0)


class QemuImgError(SovraError):
    """qemu-img failed, hit a resource limit or timed out.

    ``reason`` is ``timeout``, ``cpu_limit``, ``memory_limit``, ``failed`` or
    ``missing`` (qemu-img or prlimit not installed); ``stderr`` is truncated. On an image
    that passed inspection this almost always means it is corrupt or hostile.
    """

    status = 422
    title = "Image could not be processed"

    def __init__(self, operation: str, reason: str, detail: str, stderr: str = "") -> None:
        super().__init__(f"qemu-img {operation}: {detail}", reason=reason)
        self.operation = operation
        self.reason = reason
        self.stderr = stderr


def info(
    path: str | os.PathLike[str],
    inspected: InspectionResult,
    *,
    policy: InspectionPolicy | None = None,
    limits: Limits = INFO_LIMITS,
) -> dict[str, Any]:
    """``qemu-img info -f FMT --output=json`` of a file that passed inspection.

    ``inspected`` must be the :class:`InspectionResult` for exactly this file; its format
    is forced. Raises :class:`ImageRejected` if qemu sees a backing file, an external data
    file, a VMDK create-type or extent the inspector should have refused, another format,
    or a virtual size over the policy limit; :class:`QemuImgError` if qemu-img fails.
    """
    source = _inspected_file(path, inspected)
    fmt = qemu_format(inspected.format)
    output = _run("info", ["info", "-f", fmt, "--output=json", str(source)], limits)
    try:
        report = json.loads(output)
    except ValueError as exc:
        raise QemuImgError("info", "failed", f"unreadable JSON from qemu-img info: {exc}") from None
    if not isinstance(report, dict):
        raise QemuImgError("info", "failed", "qemu-img info did not return a JSON object")
    _check_report(report, fmt, source, policy or InspectionPolicy())
    return report


def convert(
    src: str | os.PathLike[str],
    inspected: InspectionResult,
    dst: str | os.PathLike[str],
    dst_fmt: str = "qcow2",
    *,
    policy: InspectionPolicy | None = None,
    limits: Limits = CONVERT_LIMITS,
) -> InspectionResult:
    """Convert an inspected image to ``dst_fmt`` and return the output's own inspection.

    Runs :func:`info` first (qemu must agree with the inspector before it parses the whole
    file), then ``qemu-img convert -f SRC -O DST`` with both formats explicit. ``dst`` is
    replaced if it exists. The output is inspected again and must be ``dst_fmt`` and pass
    every check; otherwise, or if anything fails, ``dst`` is removed and the error raised.
    """
    policy = policy or InspectionPolicy()
    source = _inspected_file(src, inspected)
    target = Path(dst).absolute()
    if target == source:
        raise ValueError("convert writes a new file: dst must differ from src")
    out_fmt = _output_format(dst_fmt)
    info(source, inspected, policy=policy)
    target.unlink(missing_ok=True)
    try:
        args = ["convert", "-f", qemu_format(inspected.format), "-O", out_fmt, str(source), str(target)]
        _run("convert", args, limits)
        return inspect_file(target, dst_fmt, policy)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def create_overlay(
    base: str | os.PathLike[str],
    base_inspected: InspectionResult,
    overlay: str | os.PathLike[str],
    *,
    policy: InspectionPolicy | None = None,
    limits: Limits = INFO_LIMITS,
) -> Path:
    """Create a throw-away qcow2 overlay on an inspected base image, for boot tests.

    The base is checked with :func:`info` first (Nova re-checks cached bases the same way)
    and named by absolute path with its format forced (``-b BASE -F FMT``). The overlay
    has a backing file by design, so it must never be ingested: inspection refuses it.
    """
    source = _inspected_file(base, base_inspected)
    info(source, base_inspected, policy=policy)
    target = Path(overlay).absolute()
    if target.exists():
        raise FileExistsError(f"overlay {target} already exists")
    fmt = qemu_format(base_inspected.format)
    _run("create", ["create", "-q", "-f", "qcow2", "-b", str(source), "-F", fmt, str(target)], limits)
    return target


# -- checks -------------------------------------------------------------------------


def _inspected_file(path: str | os.PathLike[str], inspected: InspectionResult) -> Path:
    """The absolute path of the file ``inspected`` describes; refuse anything else.

    Absolute, so that qemu never reads a name as an option or a ``protocol:`` spec.
    """
    if not isinstance(inspected, InspectionResult):
        raise TypeError("qemu-img only runs on files that passed inspection: pass their InspectionResult")
    source = Path(path).absolute()
    size = source.stat().st_size
    if not source.is_file() or size != inspected.bytes_read:
        raise ValueError(
            f"{source} is not the file that was inspected ({size} bytes, inspected {inspected.bytes_read})"
        )
    return source


def _output_format(dst_fmt: str) -> str:
    if dst_fmt == "iso":
        raise ValueError("qemu-img cannot write ISO images")
    return qemu_format(dst_fmt)


def _check_report(report: dict[str, Any], fmt: str, source: Path, policy: InspectionPolicy) -> None:
    """Refuse what qemu-img reports and the inspector should have refused."""
    if report.get("format") != fmt:
        raise ImageRejected(
            RejectCode.FORMAT_MISMATCH,
            f"qemu-img reads the image as {report.get('format')!r}, not the inspected {fmt!r}; refused.",
        )
    if any(key in report for key in ("backing-filename", "full-backing-filename", "backing-filename-format")):
        raise _unsafe("backing_file", "qemu-img reports a backing file; upload a standalone image")
    details = _format_specific(report)
    if "data-file" in details:
        raise _unsafe("data_file", "qemu-img reports an external data file; upload a self-contained image")
    if report.get("encrypted"):
        raise ImageRejected(
            RejectCode.FORMAT_NOT_ALLOWED,
            "the image is encrypted; upload it unencrypted (qemu-img convert without encryption)",
            check="encrypted",
        )
    if fmt == "vmdk":
        _check_vmdk(details, source)
    _check_virtual_size(report, policy)


def _check_vmdk(details: dict[str, Any], source: Path) -> None:
    create_type = details.get("create-type")
    if create_type not in VMDK_ALLOWED_TYPES:
        raise _unsafe(
            "descriptor",
            f"VMDK create-type {create_type!r} is not accepted; convert to streamOptimized or qcow2",
        )
    extents = details.get("extents") or []
    foreign = [
        e.get("filename") for e in extents if not isinstance(e, dict) or e.get("filename") != str(source)
    ]
    if foreign:
        raise _unsafe(
            "descriptor", "the VMDK names extents outside the image file; upload a single-file VMDK"
        )


def _check_virtual_size(report: dict[str, Any], policy: InspectionPolicy) -> None:
    size = report.get("virtual-size")
    if not isinstance(size, int) or size < 0:
        raise QemuImgError("info", "failed", f"qemu-img reported no usable virtual size ({size!r})")
    if size > policy.max_virtual_size:
        raise ImageRejected(
            RejectCode.VIRTUAL_SIZE_LIMIT,
            f"qemu-img reads a virtual disk of {size} bytes, more than the {policy.max_virtual_size} "
            "bytes allowed. Shrink the disk before uploading.",
        )


def _format_specific(report: dict[str, Any]) -> dict[str, Any]:
    specific = report.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    return data if isinstance(data, dict) else {}


def _unsafe(check: str, advice: str) -> ImageRejected:
    return ImageRejected(RejectCode.UNSAFE_IMAGE, f"{advice}.", check=check)


# -- running ------------------------------------------------------------------------


def _run(operation: str, args: list[str], limits: Limits) -> str:
    """Run qemu-img with ``args`` under ``limits``; return stdout or raise QemuImgError.

    ``prlimit`` sets the limits on itself and then execs qemu-img, so they hold from the
    first instruction (no ``preexec_fn``, which is unsafe in a threaded server). A new
    session lets a timeout kill qemu-img and anything it started.
    """
    argv = [
        _program(PRLIMIT, "util-linux"),
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
        f"--as={limits.address_space}",
        "--",
        _program(QEMU_IMG, "qemu-utils"),
        *args,
    ]
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": _CHILD_PATH, "LC_ALL": "C"},
        start_new_session=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise QemuImgError(
                operation, "timeout", f"no answer within {limits.timeout:g} s; killed"
            ) from None
    stderr = err.decode(errors="replace")[:_STDERR_LIMIT]
    if process.returncode != 0:
        reason = _failure_reason(process.returncode, stderr)
        raise QemuImgError(operation, reason, _describe(process.returncode, reason, stderr), stderr)
    return out.decode(errors="replace")


def _program(name: str, package: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", _CHILD_PATH) + os.pathsep + _CHILD_PATH)
    if found is None:
        raise QemuImgError("run", "missing", f"{name} is not installed (Debian package {package})")
    return found


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def _failure_reason(returncode: int, stderr: str) -> str:
    if returncode == -signal.SIGXCPU:
        return "cpu_limit"
    if any(marker in stderr for marker in _OUT_OF_MEMORY):
        return "memory_limit"
    return "failed"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _describe(returncode: int, reason: str, stderr: str) -> str:
    how = f"killed by signal {_signal_name(-returncode)}" if returncode < 0 else f"exit status {returncode}"
    what = {"cpu_limit": "CPU-time limit exceeded", "memory_limit": "address-space limit exceeded"}.get(
        reason
    )
    tail = stderr.strip() or "no error output"
    return f"{what + ', ' if what else ''}{how}: {tail}"


__all__ = [
    "CONVERT_LIMITS",
    "INFO_LIMITS",
    "Limits",
    "QemuImgError",
    "convert",
    "create_overlay",
    "info",
]
