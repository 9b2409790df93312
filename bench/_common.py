"""Shared helpers of the benchmarks: throw-away databases, child processes, timing, percentiles
and the report every benchmark prints.

Absolute times drift on a shared machine, so every benchmark measures a baseline in the same run
and reports its figures as ratios to it as well; see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
SOVRA = str(VENV_BIN / "sovra")

POSTGRES_SERVER_URL = os.environ.get("SOVRA_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""Any database on the server; benchmarks create their own database next to it."""


# -- command line --------------------------------------------------------------------------------


def parse_args(
    description: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--small", action="store_true", help="a quick run with smaller sizes")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    _exit_cleanly_on_sigterm()
    return args


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM/SIGHUP raise SystemExit, so ``finally`` blocks stop children and drop databases."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- databases -----------------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg/libpq takes it."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def _with_database(server_url: str, name: str) -> str:
    base, _, _ = libpq_url(server_url).partition("?")
    return base.rsplit("/", 1)[0] + "/" + name


@contextmanager
def temporary_postgres(prefix: str = "sovra_bench") -> Iterator[str]:
    """Create ``<prefix>_<random>``, yield its URL, and drop it ``WITH (FORCE)`` whatever happens."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_SERVER_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    log(f"created database {name}")
    try:
        yield _with_database(POSTGRES_SERVER_URL, name)
    finally:
        with psycopg.connect(POSTGRES_SERVER_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"dropped database {name}")


def migrate(url: str) -> None:
    """Bring a database to the current schema, as every Sovra process does on start."""
    from sovra.store.database import Database
    from sovra.store.migrate import upgrade

    db = Database(url)
    try:
        upgrade(db)
    finally:
        db.dispose()


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Child:
    """A process this benchmark started, with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with code {self.process.returncode}; its log ends:\n{self.tail()}"
            )


def _stop(children: Sequence[Child], timeout: float = 15.0) -> None:
    """SIGTERM each child (by its own pid), wait, SIGKILL what is left."""
    for child in children:
        if child.alive():
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


@contextmanager
def children() -> Iterator[Callable[..., Child]]:
    """``with children() as spawn: spawn(name, argv, env=..., log_dir=...)``; all are stopped on exit."""
    started: list[Child] = []

    def spawn(
        name: str, argv: Sequence[str], *, log_dir: Path, env: Mapping[str, str] | None = None
    ) -> Child:
        log_path = log_dir / f"{name}.log"
        handle = open(log_path, "wb")  # noqa: SIM115 - the child keeps it; closed below
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
            )
        finally:
            handle.close()
        child = Child(name, process, log_path)
        started.append(child)
        return child

    try:
        yield spawn
    finally:
        _stop(started)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``).

    CPU per request or per operation hardly moves when other work shares the machine, unlike wall
    time, so it is the steadiest figure for comparing two versions of the code.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_http_ok(url: str, child: Child, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200 (the server started), failing early if ``child`` died."""
    import httpx

    def ready() -> bool:
        child.check_alive()
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, f"{child.name} at {url}", interval=0.1)


# -- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Latencies:
    """Summary of latency samples, in milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of_seconds(cls, samples: Sequence[float]) -> Latencies:
        ms = [s * 1000 for s in samples]
        return cls(
            count=len(ms),
            p50=percentile(ms, 50),
            p90=percentile(ms, 90),
            p99=percentile(ms, 99),
            max=max(ms) if ms else math.nan,
            mean=sum(ms) / len(ms) if ms else math.nan,
        )

    def line(self) -> str:
        return (
            f"p50 {self.p50:8.2f} ms   p90 {self.p90:8.2f} ms   p99 {self.p99:8.2f} ms   "
            f"max {self.max:8.2f} ms   (n={self.count})"
        )


def time_calls(call: Callable[[], object], runs: int) -> list[float]:
    """Run ``call`` ``runs`` times; the duration of each, in seconds."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.inf


# -- the report ----------------------------------------------------------------------------------


@dataclass
class Report:
    """Figures, then ratios to the same-run baseline, then one summary line and exit code 0."""

    title: str
    lines: list[str] = field(default_factory=list)

    def section(self, heading: str) -> None:
        self.lines.append("")
        self.lines.append(f"-- {heading}")

    def figure(self, label: str, value: str) -> None:
        self.lines.append(f"  {label:<44} {value}")

    def note(self, text: str) -> None:
        self.lines.append(f"  {text}")

    def print(self, environment: Mapping[str, object] | None = None) -> None:
        print(f"== {self.title}")
        if environment:
            print("   " + ", ".join(f"{k}={v}" for k, v in environment.items()))
        for line in self.lines:
            print(line)
        sys.stdout.flush()

    def finish(self, met: bool, summary: str) -> int:
        """Print the one-line summary; the exit code is 0 whether or not the target was met."""
        print()
        print(f"SUMMARY {self.title}: {'TARGET MET' if met else 'TARGET MISSED'} - {summary}")
        sys.stdout.flush()
        return 0


def environment() -> dict[str, object]:
    """What the figures depend on, printed with them."""
    with psycopg.connect(POSTGRES_SERVER_URL, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    return {
        "cpus": os.cpu_count(),
        "loadavg": "/".join(f"{x:.2f}" for x in os.getloadavg()),
        "postgres": version[0] if version else "?",
        "synchronous_commit": sync[0] if sync else "?",
        "python": sys.version.split()[0],
    }


# -- a Sovra API as users drive it ---------------------------------------------------------------


def wait_operation(client: Any, operation_id: str, timeout: float = 300.0) -> dict[str, Any]:
    """Poll ``GET /v1/operations/{id}`` (``client``: an ``httpx.Client`` with base URL and token)
    until the operation ends; return it when it SUCCEEDED, raise with its error otherwise."""
    found: dict[str, Any] = {}

    def ended() -> bool:
        found.update(client.get(f"/v1/operations/{operation_id}").json())
        return found.get("state") in ("SUCCEEDED", "FAILED", "CANCELLED")

    wait_until(ended, timeout, f"operation {operation_id}", interval=0.1)
    if found["state"] != "SUCCEEDED":
        raise RuntimeError(
            f"operation {operation_id} ({found['verb']}) ended {found['state']}: {found.get('error')}"
        )
    return found


def upload_image_version(
    client: Any, project_id: str, path: Path, metadata: Mapping[str, object], **spec: Any
) -> dict[str, Any]:
    """A new image with one version holding ``path``'s bytes, uploaded and prepared (boot test off)
    until it is active, as ``tests/support/compute.py`` does it; returns the version."""
    image = client.post(f"/v1/projects/{project_id}/images", json={"name": f"bench-{secrets.token_hex(3)}"})
    image.raise_for_status()
    body = {"version": "1", "metadata": dict(metadata), "boot_test": {"enabled": False}, **spec}
    response = client.post(f"/v1/images/{image.json()['id']}/versions", json=body)
    response.raise_for_status()
    version: dict[str, Any] = response.json()
    upload = client.put(
        f"/v1/images/{version['image_id']}/versions/{version['id']}/file",
        content=path.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    )
    upload.raise_for_status()
    wait_operation(client, upload.json()["id"], timeout=300)
    return version
