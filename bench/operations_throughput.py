"""No-op operations completed per second by 1 and 4 worker processes on PostgreSQL.

Each scenario starts from the same N pending ``noop`` operations (made once with
``sovra.store.operations.create`` and copied back before every scenario), starts W worker
processes and measures from the moment the queue opens until all N are SUCCEEDED.

The workers boot while a ``LOCK TABLE operations IN EXCLUSIVE MODE`` gate is held: each blocks on
its first query of the table. Once all W wait on the lock, the gate's transaction commits and the
clock starts, so process start-up (imports, migrations check) is not counted as queue time.

Baseline, same run and same gate: W bare psycopg processes each looping over the minimum queue
work, one autocommit statement per job that claims the oldest due PENDING row with
``FOR UPDATE SKIP LOCKED`` and marks it SUCCEEDED.

    .venv/bin/python bench/operations_throughput.py [--small] [--operations N]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from _common import (
    PYTHON,
    SOVRA,
    Report,
    children,
    cpu_seconds,
    environment,
    libpq_url,
    log,
    migrate,
    parse_args,
    ratio,
    temporary_postgres,
    wait_until,
)

TARGET_OPS_PER_SECOND = 500.0
WORKER_COUNTS = (1, 4)
DEFAULT_OPERATIONS = 1500
SMALL_OPERATIONS = 300
BASELINE_REPEATS = 3  # the bare loop drains the queue in about a second: take the median of three
RUN_TIMEOUT_SECONDS = 300.0

BARE_CLAIM = """
UPDATE operations
   SET state = 'SUCCEEDED', progress = 100, finished_at = now(), updated_at = now(),
       version = version + 1
 WHERE id = (SELECT id FROM operations
              WHERE state = 'PENDING' AND not_before <= now()
              ORDER BY not_before
              LIMIT 1
              FOR UPDATE SKIP LOCKED)
RETURNING id
"""


def bare_worker(url: str) -> int:
    """The baseline worker: claim-and-complete; poll like a worker when the queue is empty, until
    SIGTERM (so that its CPU time can still be read when the run ends)."""
    done = 0
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            while True:
                if conn.execute(BARE_CLAIM).fetchone() is not None:
                    done += 1
                else:
                    time.sleep(0.05)
    except SystemExit:
        print(f"bare worker done: {done} jobs", flush=True)
    return 0


# -- setup ---------------------------------------------------------------------------------------


def create_operations(url: str, count: int) -> None:
    """N pending noop operations through the repository, kept in ``bench_template`` for reuse."""
    from sovra.store import operations as operation_store
    from sovra.store.database import Database

    db = Database(url)
    try:
        made = 0
        while made < count:
            with db.write() as conn:
                for _ in range(min(500, count - made)):
                    operation_store.create(conn, verb="noop", principal="bench", project_id=None)
                    made += 1
    finally:
        db.dispose()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_template AS SELECT * FROM operations")


def reset_queue(conn: psycopg.Connection) -> None:
    """Back to exactly the N pending operations, vacuumed and analysed."""
    conn.execute("TRUNCATE operation_steps, operations CASCADE")
    conn.execute("INSERT INTO operations SELECT * FROM bench_template")
    conn.execute("VACUUM ANALYZE operations")
    conn.execute("VACUUM ANALYZE operation_steps")
    conn.execute("CHECKPOINT")  # so that no scenario pays for an earlier one's dirty buffers


# -- one scenario --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    kind: str
    workers: int
    operations: int
    seconds: float
    server_seconds: float | None  # first started_at to last finished_at (only the engine sets both)
    worker_cpu_ms: float  # CPU per operation: the worker processes
    database_cpu_ms: float  # CPU per operation: their PostgreSQL backends

    @property
    def ops_per_second(self) -> float:
        return self.operations / self.seconds


def waiting_on_gate(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else 0


def backend_pids(conn: psycopg.Connection, exclude: set[int]) -> set[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND backend_type = 'client backend'"
    ).fetchall()
    return {int(r[0]) for r in rows} - exclude


def cpu_of(pids: set[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # a backend that has gone away meanwhile
            found[pid] = cpu_seconds(pid)
    return found


def remaining(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM operations WHERE state = 'PENDING')"
        " + (SELECT count(*) FROM operations WHERE state = 'RUNNING')"
    ).fetchone()
    return int(row[0]) if row else 0


def run_scenario(url: str, kind: str, workers: int, operations: int, work_dir: Path) -> Result:
    log(f"{kind}: {workers} worker process(es), {operations} operations")
    dsn = libpq_url(url)
    with psycopg.connect(dsn, autocommit=True) as admin:
        reset_queue(admin)
    with psycopg.connect(dsn, autocommit=True) as poll, psycopg.connect(dsn) as gate, children() as spawn:
        gate.execute("LOCK TABLE operations IN EXCLUSIVE MODE")
        procs = []
        for index in range(workers):
            if kind == "sovra":
                argv = [SOVRA, "worker"]
                env = {
                    "SOVRA_DATABASE_URL": url,
                    "SOVRA_DATA_DIR": str(work_dir / "data"),
                }
            else:
                argv = [PYTHON, __file__, "--bare-worker", url]
                env = {}
            procs.append(spawn(f"{kind}-{workers}-{index}", argv, log_dir=work_dir, env=env))

        def all_waiting() -> bool:
            for proc in procs:
                proc.check_alive()
            return waiting_on_gate(poll) >= workers

        wait_until(all_waiting, 120, f"{workers} {kind} workers to reach the gate")
        ours = {poll.info.backend_pid, gate.info.backend_pid}
        backends = backend_pids(poll, ours)
        cpu_before = cpu_of({p.process.pid for p in procs} | backends)
        started_wall = time.time()
        started = time.perf_counter()
        gate.commit()  # the queue opens
        while remaining(poll) > 0:
            if time.perf_counter() - started > RUN_TIMEOUT_SECONDS:
                raise TimeoutError(f"{kind} workers did not finish {operations} operations")
            for proc in procs:
                proc.check_alive()
            time.sleep(0.02)
        polled = time.perf_counter() - started
        backends |= backend_pids(poll, ours)
        cpu_after = cpu_of({p.process.pid for p in procs} | backends)
        row = poll.execute(
            "SELECT count(*) FILTER (WHERE state = 'SUCCEEDED'),"
            " extract(epoch FROM max(finished_at)), extract(epoch FROM min(started_at))"
            " FROM operations"
        ).fetchone()
    assert row is not None
    succeeded, last_finished, first_started = int(row[0]), float(row[1]), row[2]
    if succeeded != operations:
        raise RuntimeError(f"{kind}: {succeeded} of {operations} operations SUCCEEDED")
    # The end is the last finished_at (exact), not when the 20 ms poll noticed it.
    seconds = max(1e-6, min(polled, last_finished - started_wall))
    server = last_finished - float(first_started) if first_started is not None else None
    used = {pid: cpu - cpu_before.get(pid, 0.0) for pid, cpu in cpu_after.items()}
    worker_cpu = sum(used.get(p.process.pid, 0.0) for p in procs)
    database_cpu = sum(used.get(pid, 0.0) for pid in backends)
    result = Result(
        kind,
        workers,
        operations,
        seconds,
        server,
        1000 * worker_cpu / operations,
        1000 * database_cpu / operations,
    )
    log(f"{kind} x{workers}: {result.ops_per_second:.0f} ops/s ({seconds:.2f} s)")
    return result


# -- main ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--operations", type=int, help="operations per scenario")
    parser.add_argument("--bare-worker", metavar="URL", help=argparse.SUPPRESS)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    if args.bare_worker:
        return bare_worker(args.bare_worker)
    count = args.operations or (SMALL_OPERATIONS if args.small else DEFAULT_OPERATIONS)
    report = Report("operations_throughput")
    env = environment()
    results: dict[tuple[str, int], Result] = {}
    with tempfile.TemporaryDirectory(prefix="sovra-bench-") as tmp, temporary_postgres() as url:
        migrate(url)
        log(f"creating {count} noop operations")
        create_operations(url, count)
        # Baseline and engine alternate, so that drift on a noisy machine hits both alike.
        for workers in WORKER_COUNTS:
            bare = [run_scenario(url, "bare", workers, count, Path(tmp)) for _ in range(BASELINE_REPEATS)]
            results["bare", workers] = sorted(bare, key=lambda r: r.ops_per_second)[len(bare) // 2]
            results["sovra", workers] = run_scenario(url, "sovra", workers, count, Path(tmp))

    report.section(f"{count} noop operations per scenario, PostgreSQL, 1 worker thread per process")
    for (kind, workers), result in results.items():
        label = "sovra worker" if kind == "sovra" else f"bare loop (baseline, median of {BASELINE_REPEATS})"
        detail = f"{result.seconds:.2f} s"
        if result.server_seconds is not None:
            detail += f"; first claim to last finish {result.server_seconds:.2f} s"
        report.figure(f"{label}, {workers} process(es)", f"{result.ops_per_second:8.0f} ops/s   ({detail})")
        report.figure(
            "    CPU per operation",
            f"workers {result.worker_cpu_ms:6.3f} ms, PostgreSQL backends {result.database_cpu_ms:6.3f} ms",
        )
    report.section("ratios: sovra / baseline with the same number of processes")
    for workers in WORKER_COUNTS:
        sovra, bare = results["sovra", workers], results["bare", workers]
        report.figure(f"{workers} process(es)", f"{ratio(sovra.ops_per_second, bare.ops_per_second):8.3f}")
    for workers in WORKER_COUNTS:
        sovra, bare = results["sovra", workers], results["bare", workers]
        report.figure(
            f"CPU per operation, {workers} process(es)",
            f"workers {ratio(sovra.worker_cpu_ms, bare.worker_cpu_ms):6.1f}x, "
            f"PostgreSQL {ratio(sovra.database_cpu_ms, bare.database_cpu_ms):6.1f}x",
        )
    report.section("scaling: 4 processes / 1 process")
    for kind in ("sovra", "bare"):
        report.figure(
            kind, f"{ratio(results[kind, 4].ops_per_second, results[kind, 1].ops_per_second):8.2f}x"
        )
    report.print(env)
    four = results["sovra", 4].ops_per_second
    return report.finish(
        four >= TARGET_OPS_PER_SECOND,
        f"{four:.0f} ops/s with 4 workers (target >= {TARGET_OPS_PER_SECOND:.0f}); "
        f"{ratio(four, results['bare', 4].ops_per_second):.3f} of the bare queue "
        f"({results['bare', 4].ops_per_second:.0f} ops/s); 1 worker {results['sovra', 1].ops_per_second:.0f}"
        " ops/s",
    )


if __name__ == "__main__":
    sys.exit(main())
