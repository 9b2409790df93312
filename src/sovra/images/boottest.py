"""Boot an image once under QEMU and watch its serial console for a marker.

A version becomes ``active`` only after it has shown, on a real (emulated) machine, that it
boots: the console prints the marker (``login:`` or cloud-init's "finished" line by default)
within the timeout. The test must never change the image, so the guest runs on a throw-away
qcow2 overlay whose backing file is the image; QEMU opens the backing file read-only.

There is no KVM on our hosts (see the virtualisation notes), so QEMU always runs with
``-accel tcg``. Whatever happens (marker, timeout, guest crash, cancellation through
``check()``), QEMU is killed and the overlay removed before this module returns or raises.
"""

from __future__ import annotations

import codecs
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sovra.images import qemu_img
from sovra.images.inspection import inspect_file

QEMU = "qemu-system-x86_64"
LOG_TAIL_BYTES = 4096
POLL_SECONDS = 0.1
SETTLE_QUIET_SECONDS = 0.3
SETTLE_MAX_SECONDS = 1.5
_WINDOW_CHARS = 1 << 20
"""The marker is searched in at most this much of the newest console text (a chatty guest must
not grow memory without bound); any sane marker is far shorter."""


@dataclass(frozen=True)
class BootTestResult:
    passed: bool
    log_tail: str
    """The last ~4 KiB of console output (undecodable bytes replaced), plus QEMU's own error
    output when QEMU stopped by itself with an error."""
    seconds: float
    log_path: Path | None
    """The full console log, only when ``keep_log`` was asked for; the caller removes it."""
    reason: str = ""
    """Why the test ended: ``marker``, ``timeout`` or ``guest stopped (exit status N)``."""


class BootTestError(RuntimeError):
    """The boot test could not be run at all (QEMU missing or failing to start)."""


def boot_test(
    disk: Path,
    disk_format: str,
    *,
    marker: str,
    timeout: float,
    memory_mib: int,
    work_dir: Path,
    check: Callable[[], None] | None = None,
    seed_iso: Path | None = None,
    keep_log: bool = False,
    disk_bus: Literal["virtio", "ide"] = "virtio",
) -> BootTestResult:
    """Boot ``disk`` (never written) and wait up to ``timeout`` seconds for ``marker`` (a regex).

    ``check`` is called between polls; whatever it raises propagates after QEMU has been
    stopped and the scratch files removed (that is how an operation is cancelled). ``seed_iso``
    is attached read-only as an IDE CD-ROM, the way a NoCloud seed or config drive usually is.

    Raises :class:`~sovra.images.inspection.ImageRejected` if ``disk`` does not pass inspection
    as ``disk_format``, :class:`~sovra.images.qemu_img.QemuImgError` if the overlay cannot be
    made, :class:`BootTestError` if QEMU is not installed. A guest that does not boot is not an
    error: the result says ``passed=False`` and why.
    """
    pattern = re.compile(marker)
    work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="boottest-", dir=work_dir))
    console = run_dir / "console.log"
    started = time.monotonic()
    process: subprocess.Popen[bytes] | None = None
    kept: Path | None = None
    try:
        overlay = _overlay(disk, disk_format, run_dir / "overlay.qcow2")
        command = _qemu_command(overlay, console, memory_mib, seed_iso, disk_bus)
        process = _start(command, run_dir / "qemu.stderr")
        reader = _ConsoleReader(console)
        reason = _watch(process, reader, pattern, started + max(timeout, 0.0), check)
        if reason == "marker":
            _settle(process, reader)
        _stop(process)
        tail = _tail(console) + _qemu_errors(process, run_dir / "qemu.stderr")
        if keep_log:
            kept = _keep(console, work_dir)
        return BootTestResult(
            passed=reason == "marker",
            log_tail=tail,
            seconds=time.monotonic() - started,
            log_path=kept,
            reason=reason,
        )
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(run_dir, ignore_errors=True)


# --- QEMU ----------------------------------------------------------------------------------------


def _overlay(disk: Path, disk_format: str, overlay: Path) -> Path:
    """A throw-away qcow2 on top of ``disk``: the guest's writes land there, never in the image.

    qemu-img only touches inspected files, so the base is inspected again here (it reads the
    first MiB); an image that does not pass raises :class:`ImageRejected`.
    """
    inspected = inspect_file(disk, disk_format)
    return qemu_img.create_overlay(disk, inspected, overlay)


def _qemu_command(
    overlay: Path, console: Path, memory_mib: int, seed_iso: Path | None, disk_bus: str
) -> list[str]:
    """TCG only (KVM here is a software shim that crashes guests); no NIC, no display."""
    command = [
        _tool(QEMU, "qemu-system-x86"),
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-m",
        str(memory_mib),
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-name",
        "sovra-boot-test",
        "-chardev",
        f"file,id=console,path={_escape(console)}",
        "-serial",
        "chardev:console",
        "-drive",
        f"file={_escape(overlay)},format=qcow2,if={disk_bus},index=0",
    ]
    if seed_iso is not None:
        command += [
            "-drive",
            f"file={_escape(seed_iso.resolve())},format=raw,if=ide,index=2,media=cdrom,readonly=on",
        ]
    return command


def _escape(path: Path) -> str:
    """QEMU option values separate on commas; a literal comma is written twice."""
    return str(path).replace(",", ",,")


def _start(command: list[str], stderr_path: Path) -> subprocess.Popen[bytes]:
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Kill, not power off: the overlay is thrown away, so there is nothing to shut down cleanly."""
    if process.poll() is None:
        process.kill()
    process.wait()


def _watch(
    process: subprocess.Popen[bytes],
    reader: _ConsoleReader,
    pattern: re.Pattern[str],
    deadline: float,
    check: Callable[[], None] | None,
) -> str:
    """Poll the console until the marker, the guest's end or the deadline; call ``check`` in between."""
    while True:
        if pattern.search(reader.read()):
            return "marker"
        status = process.poll()
        if status is not None:  # the last words may have landed after the read above
            return "marker" if pattern.search(reader.read()) else f"guest stopped (exit status {status})"
        if time.monotonic() >= deadline:
            return "timeout"
        if check is not None:
            check()
        time.sleep(POLL_SECONDS)


def _settle(process: subprocess.Popen[bytes], reader: _ConsoleReader) -> None:
    """After the marker, wait (briefly, bounded) until the console is quiet, so that the tail shows
    what the guest printed around the marker (the rest of the line, the login prompt), not a
    cut that depends on when the poll happened to look."""
    give_up = time.monotonic() + SETTLE_MAX_SECONDS
    seen, quiet_since = reader.offset, time.monotonic()
    while time.monotonic() < give_up and process.poll() is None:
        time.sleep(POLL_SECONDS)
        reader.read()
        if reader.offset != seen:
            seen, quiet_since = reader.offset, time.monotonic()
        elif time.monotonic() - quiet_since >= SETTLE_QUIET_SECONDS:
            return


class _ConsoleReader:
    """Reads what QEMU appended to the console file since the last call, decoded incrementally
    (a UTF-8 character split between two reads is not mangled)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._window = ""

    def read(self) -> str:
        try:
            with self._path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:  # QEMU has not created it yet
            return self._window
        self.offset += len(data)
        self._window = (self._window + self._decoder.decode(data))[-_WINDOW_CHARS:]
        return self._window


def _tail(console: Path) -> str:
    try:
        with console.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n")


def _qemu_errors(process: subprocess.Popen[bytes], stderr_path: Path) -> str:
    """QEMU's complaint (bad image, missing firmware...) when it ended on its own with an error."""
    if process.returncode in (0, -9) or not stderr_path.exists():
        return ""
    text = stderr_path.read_bytes()[-LOG_TAIL_BYTES:].decode("utf-8", errors="replace").strip()
    return f"\n[qemu exit status {process.returncode}] {text}" if text else ""


def _keep(console: Path, work_dir: Path) -> Path:
    handle, name = tempfile.mkstemp(prefix="boottest-", suffix=".log", dir=work_dir)
    with open(handle, "wb") as target, console.open("rb") as source:
        shutil.copyfileobj(source, target)
    return Path(name)


# --- helpers -------------------------------------------------------------------------------------


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BootTestError(f"{name} is not installed (apt-get install {package})")
    return found


def _run(command: list[str]) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip()[-2000:]
        raise BootTestError(f"{Path(command[0]).name} {command[1]} failed: {detail}")
