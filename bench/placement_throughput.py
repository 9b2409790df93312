"""Placements per second of the scheduler on 1,000 and 10,000 simulated hosts with 4 processes on
PostgreSQL, and full ``server.create`` operations on ``fake://`` hosts with 4 ``sovra worker``.

Hosts are ``fake://`` hosts written straight through the store, exactly as ``host.refresh``
records them (a Host resource, its status with inventory and capacity, ``placement.sync_host``).
Each has 16 CPUs (64 vCPUs at the default 4.0 ratio), 64 GiB and 1,000 GiB, so every host takes
32 SCS-1V-2 servers (1 vCPU, 2 GiB, 1 GiB root disk for the 1 MiB benchmark image) and 10,000
servers fit on 1,000 hosts at about a third of their RAM.

(a) The scheduler as the ``schedule`` step runs it: 4 processes each call
    ``sovra.compute.scheduler.place()`` for their share of N consumers (Server resource rows made
    beforehand: an allocation's consumer must exist). They start together through a PostgreSQL
    advisory-lock gate, so process start-up is not counted. Afterwards: no host overcommitted, every
    consumer holds exactly one allocation, every host's used columns equal the sum of its
    allocations.
    Baseline, same run, same gate: 4 bare psycopg processes doing only the database work of a claim,
    one transaction per placement: read a random host's generation by primary key, the guarded
    ``UPDATE host_capacity ... WHERE host_id = %s AND generation = %s``, the ``INSERT INTO
    allocations``. No filtering, no weighing.
(b) Full ``server.create`` (schedule, image, disks, boot) on the smaller host set with 4
    ``sovra worker`` processes: M servers (default 2,000) recorded with
    ``sovra.compute.servers.create`` before the workers start, the clock from the gate to the last
    operation's ``finished_at``.

    .venv/bin/python bench/placement_throughput.py [--small] [--placements N] [--servers M]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from _common import (
    PYTHON,
    SOVRA,
    Latencies,
    Report,
    children,
    cpu_seconds,
    environment,
    free_port,
    libpq_url,
    log,
    migrate,
    parse_args,
    percentile,
    ratio,
    temporary_postgres,
    upload_image_version,
    wait_http_ok,
    wait_until,
)

TARGET_PLACEMENTS_PER_SECOND = 200.0
PROCESSES = 4
HOST_COUNTS = (1_000, 10_000)
SMALL_HOST_COUNTS = (100, 1_000)
DEFAULT_PLACEMENTS = 10_000
SMALL_PLACEMENTS = 1_000
DEFAULT_SERVERS = 1_000
SMALL_SERVERS = 200

HOST_CPUS, HOST_MEMORY_MIB, HOST_DISK_GIB = 16, 65_536, 1_000
VCPUS, MEMORY_MIB, DISK_GIB = 1, 2_048, 1  # SCS-1V-2 booting the 1 MiB image (min_disk 1)
FLAVOR = "SCS-1V-2"
GATE_KEY = 0x50A7  # the advisory lock the parent holds until every child waits on it
RUN_TIMEOUT_SECONDS = 1_800.0

IMAGE_METADATA = {
    "architecture": "x86_64",
    "min_disk": 1,
    "min_ram": 128,
    "os_distro": "bench",
    "os_version": "1",
    "replace_frequency": "never",
    "provided_until": "none",
    "image_source": "private",
    "image_description": "benchmark",
    "image_build_date": "2026-11-23",
    "image_original_user": "root",
}


def host_uri(index: int) -> str:
    return f"fake://bench-h{index:05d}?cpus={HOST_CPUS}&memory_mib={HOST_MEMORY_MIB}&disk_gib={HOST_DISK_GIB}"


# -- the child processes --------------------------------------------------------------------------


def pass_gate(url: str) -> None:
    """Block until the parent releases the gate (its exclusive advisory lock)."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock_shared(%s)", (GATE_KEY,))
        conn.execute("SELECT pg_advisory_unlock_shared(%s)", (GATE_KEY,))


def place_worker(url: str, job_path: str, out_path: str) -> int:
    """(a): ``scheduler.place()`` for each consumer of the job, as the ``schedule`` step calls it."""
    from prometheus_client import REGISTRY

    from sovra.compute.scheduler import NoValidHost, PlacementRequest, place
    from sovra.config import Settings
    from sovra.store.database import Database

    job = json.loads(Path(job_path).read_text())
    settings = Settings(database_url=url)
    db = Database(url)
    with db.read() as conn:  # the pooled connection is open before the clock starts
        conn.exec_driver_sql("SELECT 1")
    samples: list[float] = []
    no_valid_host = 0
    pass_gate(url)
    started, cpu = time.time(), time.process_time()
    for consumer in job["consumers"]:
        request = PlacementRequest(
            consumer_id=consumer,
            project_id=job["project_id"],
            vcpus=VCPUS,
            memory_mib=MEMORY_MIB,
            disk_gib=DISK_GIB,
        )
        before = time.perf_counter()
        try:
            place(db, request, settings)
        except NoValidHost:
            no_valid_host += 1
        samples.append(time.perf_counter() - before)
    finished, cpu = time.time(), time.process_time() - cpu
    conflicts = REGISTRY.get_sample_value("sovra_scheduler_claim_conflicts_total") or 0.0
    db.dispose()
    Path(out_path).write_text(
        json.dumps(
            {
                "started": started,
                "finished": finished,
                "cpu": cpu,
                "samples": samples,
                "conflicts": int(conflicts),
                "failed": no_valid_host,
                "settings": {
                    "weigher": settings.scheduler_weigher,
                    "subset_size": settings.scheduler_subset_size,
                    "max_attempts": settings.scheduler_max_attempts,
                },
            }
        )
    )
    return 0


BARE_GENERATION = "SELECT generation FROM host_capacity WHERE host_id = %s"
BARE_UPDATE = """
UPDATE host_capacity
   SET used_vcpus = used_vcpus + %s, used_memory_mib = used_memory_mib + %s,
       used_disk_gib = used_disk_gib + %s, servers = servers + 1,
       generation = generation + 1, updated_at = now()
 WHERE host_id = %s AND generation = %s
"""
BARE_INSERT = """
INSERT INTO allocations (consumer_id, host_id, project_id, vcpus, memory_mib, disk_gib, created_at)
VALUES (%s, %s, %s, %s, %s, %s, now())
"""


def bare_worker(url: str, job_path: str, out_path: str) -> int:
    """The baseline: only the claim's statements, on a host picked at random, one transaction each."""
    job = json.loads(Path(job_path).read_text())
    samples: list[float] = []
    conflicts = 0
    with psycopg.connect(libpq_url(url)) as conn:
        hosts = [row[0] for row in conn.execute("SELECT host_id FROM host_capacity").fetchall()]
        conn.commit()
        pass_gate(url)
        started, cpu = time.time(), time.process_time()
        for consumer in job["consumers"]:
            before = time.perf_counter()
            while True:
                host = random.choice(hosts)
                with conn.transaction():
                    row = conn.execute(BARE_GENERATION, (host,)).fetchone()
                    assert row is not None
                    claimed = conn.execute(BARE_UPDATE, (VCPUS, MEMORY_MIB, DISK_GIB, host, row[0])).rowcount
                    if claimed == 1:
                        conn.execute(
                            BARE_INSERT, (consumer, host, job["project_id"], VCPUS, MEMORY_MIB, DISK_GIB)
                        )
                if claimed == 1:
                    break
                conflicts += 1
            samples.append(time.perf_counter() - before)
        finished, cpu = time.time(), time.process_time() - cpu
    Path(out_path).write_text(
        json.dumps(
            {
                "started": started,
                "finished": finished,
                "cpu": cpu,
                "samples": samples,
                "conflicts": conflicts,
                "failed": 0,
            }
        )
    )
    return 0


# -- setup ----------------------------------------------------------------------------------------


def create_project(url: str) -> str:
    from sovra.domain.project import PROJECT_KIND, ProjectState
    from sovra.store import resources as resource_store
    from sovra.store.database import Database

    db = Database(url)
    try:
        with db.write() as conn:
            project = resource_store.create(
                conn,
                kind=PROJECT_KIND,
                name="bench",
                project_id=None,
                labels={},
                spec={},
                state=ProjectState.ACTIVE,
            )
        return project.id
    finally:
        db.dispose()


def create_hosts(url: str, first: int, last: int) -> None:
    """Hosts ``first`` to ``last - 1``, recorded as ``host.refresh`` records a fake host it reached."""
    from sovra.compute import hosts
    from sovra.compute.hosts import observed
    from sovra.domain.host import HOST_KIND, HostSpec, HostState
    from sovra.store import resources as resource_store
    from sovra.store.database import Database
    from sovra.virt.fake import parse_fake_uri

    db = Database(url)
    try:
        for start in range(first, last, 250):
            with db.write() as conn:
                for index in range(start, min(last, start + 250)):
                    spec = HostSpec(uri=host_uri(index))
                    inventory = parse_fake_uri(spec.uri)
                    host = resource_store.create(
                        conn,
                        kind=HOST_KIND,
                        name=f"bench-h{index:05d}",
                        project_id=None,
                        labels={},
                        spec=spec.model_dump(mode="json"),
                        state=HostState.REGISTERING,
                    )
                    hosts.update_status(
                        conn, host.id, functools.partial(observed, spec=spec, inventory=inventory)
                    )
    finally:
        db.dispose()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM host_capacity WHERE state = 'enabled'").fetchone()
    assert row is not None and row[0] == last, f"{row} enabled hosts in host_capacity, expected {last}"


def create_consumers(url: str, project_id: str, count: int) -> list[str]:
    """Server resource rows for the allocations to name (``allocations.consumer_id`` is a foreign
    key); ``place()`` reads nothing else of them."""
    from sovra.domain.ids import new_id
    from sovra.domain.server import SERVER_KIND

    ids = [new_id() for _ in range(count)]
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO resources (id, kind, name, project_id, public, labels, spec, status, generation,"
            " version, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, false, '{}', '{}', '{\"state\": \"BUILDING\", \"conditions\": []}',"
            " 1, 1, now(), now())",
            [(consumer, SERVER_KIND, f"bench-c{i:05d}", project_id) for i, consumer in enumerate(ids)],
        )
    return ids


def reset_claims(url: str) -> None:
    """No allocation, every host empty at generation 1; vacuumed, analysed, checkpointed."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("TRUNCATE allocations")
        conn.execute(
            "UPDATE host_capacity SET used_vcpus = 0, used_memory_mib = 0, used_disk_gib = 0,"
            " servers = 0, generation = 1"
        )
        conn.execute("VACUUM ANALYZE host_capacity")
        conn.execute("VACUUM ANALYZE allocations")
        conn.execute("VACUUM ANALYZE resources")
        conn.execute("CHECKPOINT")


# -- (a) one placement scenario -------------------------------------------------------------------


@dataclass
class PlaceResult:
    kind: str  # "sovra" or "bare"
    hosts: int
    placements: int
    seconds: float
    latencies: Latencies
    conflicts: int
    failed: int
    worker_cpu_ms: float
    database_cpu_ms: float
    checks: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        """Placements made (a request that ended in NoValidHost placed nothing) per second."""
        return (self.placements - self.failed) / self.seconds


def waiting_on_lock(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else 0


def client_backends(conn: psycopg.Connection) -> set[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ).fetchall()
    return {int(r[0]) for r in rows}


def cpu_of(pids: set[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            found[pid] = cpu_seconds(pid)
    return found


def run_placements(
    url: str, kind: str, hosts: int, project_id: str, consumers: Sequence[str], work_dir: Path
) -> PlaceResult:
    log(f"{kind}: {len(consumers)} placements on {hosts} hosts, {PROCESSES} processes")
    reset_claims(url)
    dsn = libpq_url(url)
    outputs = []
    with psycopg.connect(dsn, autocommit=True) as gate, children() as spawn:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE_KEY,))
        procs = []
        for index in range(PROCESSES):
            job = work_dir / f"{kind}-{hosts}-{index}.job.json"
            job.write_text(
                json.dumps({"project_id": project_id, "consumers": list(consumers[index::PROCESSES])})
            )
            out = work_dir / f"{kind}-{hosts}-{index}.out.json"
            out.unlink(missing_ok=True)
            outputs.append(out)
            flag = "--place-worker" if kind == "sovra" else "--bare-worker"
            procs.append(
                spawn(
                    f"{kind}-{hosts}-{index}",
                    [PYTHON, __file__, flag, url, str(job), str(out)],
                    log_dir=work_dir,
                )
            )

        def all_waiting() -> bool:
            for proc in procs:
                if not proc.alive() and proc.process.returncode != 0:
                    proc.check_alive()
            return waiting_on_lock(gate) >= PROCESSES

        wait_until(all_waiting, 120, f"{PROCESSES} {kind} processes to reach the gate")
        backends = client_backends(gate) - {gate.info.backend_pid}
        cpu_before = cpu_of(backends)
        opened = time.time()
        gate.execute("SELECT pg_advisory_unlock(%s)", (GATE_KEY,))
        cpu_after: dict[int, float] = {}
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while any(p.alive() for p in procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} processes did not finish {len(consumers)} placements")
            # the backends' CPU is read while they run (one that ended has no /proc entry left): the
            # last reading, at most 50 ms old, is what it used; the processes measure their own
            cpu_after.update(cpu_of(backends))
            time.sleep(0.05)
        for proc in procs:
            if proc.process.returncode != 0:
                raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.tail()}")
    results = [json.loads(out.read_text()) for out in outputs]
    samples = [s for r in results for s in r["samples"]]
    seconds = max(r["finished"] for r in results) - opened
    used = {
        pid: cpu_after.get(pid, cpu_before.get(pid, 0.0)) - cpu_before.get(pid, 0.0) for pid in cpu_before
    }
    result = PlaceResult(
        kind=kind,
        hosts=hosts,
        placements=len(samples),
        seconds=seconds,
        latencies=Latencies.of_seconds(samples),
        conflicts=sum(r["conflicts"] for r in results),
        failed=sum(r["failed"] for r in results),
        worker_cpu_ms=1000 * sum(r["cpu"] for r in results) / len(samples),  # measured by each process
        database_cpu_ms=1000 * sum(used.values()) / len(samples),
        settings=results[0].get("settings", {}),
    )
    result.checks = check_placements(url, consumers)
    log(
        f"{kind} on {hosts} hosts: {result.per_second:.0f} placements/s ({seconds:.1f} s),"
        f" {result.conflicts} claim conflicts"
    )
    return result


def check_placements(url: str, consumers: Sequence[str]) -> dict[str, Any]:
    """What must hold after any number of concurrent placements."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:

        def one(sql: str, params: Sequence[Any] = ()) -> Any:
            row = conn.execute(sql, params).fetchone()
            assert row is not None
            return row[0] if len(row) == 1 else row

        allocated = one("SELECT count(*) FROM allocations WHERE consumer_id = ANY(%s)", (list(consumers),))
        per_host = one(
            "SELECT min(servers), max(servers), count(*) FILTER (WHERE servers > 0) FROM host_capacity"
        )
        return {
            "consumers": len(consumers),
            "with_one_allocation": allocated,  # consumer_id is the primary key: never two
            "without_allocation": len(consumers) - allocated,
            "overcommitted_hosts": one(
                "SELECT count(*) FROM host_capacity WHERE used_vcpus > capacity_vcpus"
                " OR used_memory_mib > capacity_memory_mib OR used_disk_gib > capacity_disk_gib"
            ),
            "hosts_not_matching_allocations": one(
                "SELECT count(*) FROM host_capacity h LEFT JOIN ("
                "  SELECT host_id, sum(vcpus) AS v, sum(memory_mib) AS m, sum(disk_gib) AS d, count(*) AS n"
                "  FROM allocations GROUP BY host_id) a USING (host_id)"
                " WHERE h.used_vcpus <> coalesce(a.v, 0) OR h.used_memory_mib <> coalesce(a.m, 0)"
                " OR h.used_disk_gib <> coalesce(a.d, 0) OR h.servers <> coalesce(a.n, 0)"
            ),
            "servers_per_host": (int(per_host[0]), int(per_host[1])),
            "hosts_used": int(per_host[2]),
        }


def checks_ok(result: PlaceResult) -> bool:
    """No host overcommitted, usage equal to the allocations, and every consumer holds exactly one
    allocation unless its request failed (NoValidHost) and said so."""
    checks = result.checks
    return bool(
        checks["without_allocation"] == result.failed
        and checks["overcommitted_hosts"] == 0
        and checks["hosts_not_matching_allocations"] == 0
    )


def explain_fast_path(url: str) -> tuple[float, str]:
    """Server-side execution time (ms) and plan of the scheduler's fast-path query, as it is now."""
    import sqlalchemy as sa

    from sovra.compute.scheduler import PlacementRequest, fast_path, filters
    from sovra.config import Settings
    from sovra.store.database import normalise_url

    request = PlacementRequest(
        consumer_id="x", project_id="x", vcpus=VCPUS, memory_mib=MEMORY_MIB, disk_gib=DISK_GIB
    )
    query = fast_path(filters(request), Settings(database_url=url))
    dialect = sa.create_engine(normalise_url(url)).dialect  # no connection is opened
    sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(sql).fetchall()  # warm
        times = []
        plan = ""
        for _ in range(5):
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").fetchall()
            plan = "\n".join(str(r[0]) for r in rows)
            line = next(r[0] for r in rows if str(r[0]).startswith("Execution Time"))
            times.append(float(str(line).split(":")[1].split()[0]))
    return percentile(times, 50), plan


# -- (b) full server.create on fake hosts ---------------------------------------------------------


@dataclass
class CreateResult:
    hosts: int
    servers: int
    seconds: float
    succeeded: int
    states: dict[str, int]
    run_latencies: Latencies  # started_at -> finished_at of each operation
    steps: dict[str, Latencies]
    attempts_over_one: int
    worker_cpu_ms: float
    database_cpu_ms: float
    checks: dict[str, Any]
    faults: dict[str, int]
    early: int  # operations that finished in the first EARLY_WINDOW_SECONDS
    layout: str = ""

    @property
    def per_second(self) -> float:
        return self.succeeded / self.seconds

    @property
    def early_per_second(self) -> float:
        return self.early / min(EARLY_WINDOW_SECONDS, self.seconds)


def prepare_image(url: str, work_dir: Path) -> tuple[str, str]:
    """A project and an active 1 MiB raw image version, made through a real API and worker (the
    upload path users take); returns (project id, version id)."""
    token = secrets.token_urlsafe(16)
    port = free_port()
    env = {
        "SOVRA_DATABASE_URL": url,
        "SOVRA_DATA_DIR": str(work_dir / "data"),
        "SOVRA_ADMIN_TOKEN": token,
        "SOVRA_API_PORT": str(port),
    }
    raw = work_dir / "image.raw"
    raw.write_bytes(b"\0" * 1024 * 1024)
    base = f"http://127.0.0.1:{port}"
    with children() as spawn:
        api = spawn("setup-api", [SOVRA, "api"], log_dir=work_dir, env=env)
        spawn("setup-worker", [SOVRA, "worker"], log_dir=work_dir, env=env)
        wait_http_ok(f"{base}/readyz", api)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            project = client.post("/v1/projects", json={"name": "bench-create"})
            project.raise_for_status()
            project_id = project.json()["id"]
            version = upload_image_version(
                client,
                project_id,
                raw,
                IMAGE_METADATA,
                disk_format="raw",
                source={"type": "upload", "declared_format": "raw"},
            )
    return project_id, str(version["id"])


def create_servers(url: str, project_id: str, version_id: str, count: int) -> None:
    """``count`` servers recorded as the API records them (BUILDING, with a pending server.create)."""
    from sovra.auth.context import RequestContext
    from sovra.compute import servers
    from sovra.store.database import Database

    ctx = RequestContext(principal="bench", display_name="bench", is_admin=True)
    db = Database(url)
    try:
        for start in range(0, count, 200):
            with db.write() as conn:
                for index in range(start, min(count, start + 200)):
                    name = f"bench-s{index:05d}"
                    servers.create(
                        conn,
                        ctx,
                        project_id,
                        servers.CreateRequest(
                            name=name,
                            labels={},
                            image_ref=version_id,
                            flavor_ref=FLAVOR,
                            key_names=[],
                            user_data=None,
                            server_group_id=None,
                            power_state="running",
                            hostname=name,
                            description="",
                            request_id=None,
                        ),
                    )
    finally:
        db.dispose()


def remaining_creates(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM operations WHERE verb = 'server.create' AND state IN ('PENDING', 'RUNNING')"
    ).fetchone()
    return int(row[0]) if row else 0


LAYOUTS = {
    "processes": f"{PROCESSES} x `sovra worker`",
    "threads": f"1 x `sovra worker --concurrency {PROCESSES}`",
}
"""(b) runs both: the processes the issue asks for, and the same number of worker threads in one
process, where every worker sees the same in-memory fake hosts (see the README)."""
EARLY_WINDOW_SECONDS = 10.0  # no periodic task that reads the hosts runs before 10 s (power resync)


def clear_servers(url: str) -> None:
    """No server, allocation or operation left; hosts empty, their image caches forgotten."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("TRUNCATE allocations")
        conn.execute("DELETE FROM resources WHERE kind = 'Server'")
        conn.execute("DELETE FROM operations WHERE verb LIKE 'server.%'")
        conn.execute("UPDATE resources SET status = status - 'image_cache' WHERE kind = 'Host'")
    reset_claims(url)


def run_creates(
    url: str, hosts: int, count: int, work_dir: Path, layout: str, project_id: str, version_id: str
) -> CreateResult:
    clear_servers(url)
    log(f"recording {count} servers (server.create pending)")
    create_servers(url, project_id, version_id, count)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for table in ("operations", "operation_steps", "resources", "edges", "host_capacity"):
            conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute("CHECKPOINT")
    log(f"full server.create: {count} servers on {hosts} fake hosts, {LAYOUTS[layout]}")
    dsn = libpq_url(url)
    env = {"SOVRA_DATABASE_URL": url, "SOVRA_DATA_DIR": str(work_dir / "data")}
    if layout == "processes":
        argvs = [[SOVRA, "worker"] for _ in range(PROCESSES)]
    else:
        argvs = [[SOVRA, "worker", "--concurrency", str(PROCESSES)]]
    with psycopg.connect(dsn, autocommit=True) as poll, psycopg.connect(dsn) as gate, children() as spawn:
        gate.execute("LOCK TABLE operations IN EXCLUSIVE MODE")
        procs = [
            spawn(f"create-{layout}-{i}", argv, log_dir=work_dir, env=env) for i, argv in enumerate(argvs)
        ]

        def all_waiting() -> bool:
            for proc in procs:
                proc.check_alive()
            return waiting_on_lock(poll) >= PROCESSES  # one blocked claim per worker thread

        wait_until(all_waiting, 120, f"{PROCESSES} sovra workers to reach the gate")
        backends = client_backends(poll) - {gate.info.backend_pid}
        pids = {p.process.pid for p in procs}
        cpu_before = cpu_of(pids | backends)
        opened = time.time()
        gate.commit()
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        last_report = time.monotonic()
        while (left := remaining_creates(poll)) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} of {count} server.create operations still pending or running")
            for proc in procs:
                proc.check_alive()
            if time.monotonic() - last_report > 15:
                log(f"  {count - left} of {count} server.create operations done")
                last_report = time.monotonic()
            time.sleep(0.1)
        backends |= client_backends(poll)
        cpu_after = cpu_of(pids | backends)
        result = collect_creates(poll, hosts, count, opened)
    result.layout = layout
    used = {pid: cpu - cpu_before.get(pid, 0.0) for pid, cpu in cpu_after.items()}
    result.worker_cpu_ms = 1000 * sum(used.get(pid, 0.0) for pid in pids) / count
    result.database_cpu_ms = 1000 * sum(used.get(pid, 0.0) for pid in backends) / count
    log(f"server.create ({layout}): {result.per_second:.1f} servers/s ({result.seconds:.1f} s)")
    return result


def time_health_check(url: str) -> tuple[int, float]:
    """One round of the periodic host health check (every worker process runs one every 30 s)."""
    from sovra.compute import hosts
    from sovra.config import Settings
    from sovra.store.database import Database

    db = Database(url)
    try:
        with db.read() as conn:
            count = conn.exec_driver_sql("SELECT count(*) FROM resources WHERE kind = 'Host'").scalar_one()
        started = time.perf_counter()
        hosts.health_check(db, Settings(database_url=url))
        return int(count), time.perf_counter() - started
    finally:
        db.dispose()


def collect_creates(conn: psycopg.Connection, hosts: int, count: int, opened: float) -> CreateResult:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return conn.execute(sql).fetchall()

    ops = rows(
        "SELECT state, extract(epoch FROM started_at), extract(epoch FROM finished_at), attempt"
        " FROM operations WHERE verb = 'server.create'"
    )
    succeeded = [op for op in ops if op[0] == "SUCCEEDED"]
    last = max(float(op[2]) for op in ops if op[2] is not None)
    steps: dict[str, list[float]] = {}
    for name, seconds in rows(
        "SELECT s.name, extract(epoch FROM s.finished_at - s.started_at) FROM operation_steps s"
        " JOIN operations o ON o.id = s.operation_id"
        " WHERE o.verb = 'server.create' AND s.state = 'SUCCEEDED'"
    ):
        steps.setdefault(name, []).append(float(seconds))
    states = {
        row[0]: row[1]
        for row in rows("SELECT status->>'state', count(*) FROM resources WHERE kind = 'Server' GROUP BY 1")
    }
    faults: dict[str, int] = {}
    for (status,) in rows(
        "SELECT status FROM resources WHERE kind = 'Server' AND status->>'state' <> 'ACTIVE'"
    ):
        fault = status.get("fault") or {}
        running: dict[str, Any] = next(
            (c for c in status.get("conditions", []) if c.get("type") == "Running"), {}
        )
        why = (
            f"{status.get('state')}, power {status.get('power_state')}, Running={running.get('status')}"
            f" ({running.get('reason')}), fault {fault.get('code', '-')} {fault.get('message', '')[:100]}"
        )
        faults[why] = faults.get(why, 0) + 1
    over = rows(
        "SELECT count(*) FROM host_capacity WHERE used_vcpus > capacity_vcpus"
        " OR used_memory_mib > capacity_memory_mib OR used_disk_gib > capacity_disk_gib"
    )[0][0]
    allocated = rows("SELECT count(*) FROM allocations")[0][0]
    order = ["schedule", "image", "disks", "boot"]
    return CreateResult(
        hosts=hosts,
        servers=count,
        seconds=max(1e-6, last - opened),
        succeeded=len(succeeded),
        states={str(k): int(v) for k, v in states.items()},
        run_latencies=Latencies.of_seconds([float(op[2]) - float(op[1]) for op in succeeded]),
        steps={
            name: Latencies.of_seconds(steps[name])
            for name in sorted(steps, key=lambda n: order.index(n) if n in order else 99)
        },
        attempts_over_one=sum(1 for op in ops if op[3] > 1),
        worker_cpu_ms=0.0,
        database_cpu_ms=0.0,
        checks={"allocations": int(allocated), "overcommitted_hosts": int(over)},
        faults=dict(sorted(faults.items(), key=lambda item: -item[1])[:5]),
        early=sum(1 for op in succeeded if float(op[2]) <= opened + EARLY_WINDOW_SECONDS),
    )


def drop_hosts_from(url: str, keep: int) -> None:
    """Back to the first ``keep`` hosts, without consumers or allocations."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("TRUNCATE allocations")
        conn.execute("DELETE FROM resources WHERE kind = 'Server'")
        conn.execute("DELETE FROM resources WHERE kind = 'Host' AND name >= %s", (f"bench-h{keep:05d}",))
    reset_claims(url)


# -- main -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--placements", type=int, help=f"placements per scenario (default {DEFAULT_PLACEMENTS})"
    )
    parser.add_argument(
        "--hosts",
        type=int,
        nargs="+",
        help=f"host counts, ascending (default {' '.join(map(str, HOST_COUNTS))})",
    )
    parser.add_argument(
        "--servers", type=int, help=f"servers for the full create (default {DEFAULT_SERVERS})"
    )
    parser.add_argument("--no-create", action="store_true", help="skip (b), the full server.create")
    parser.add_argument(
        "--layouts",
        nargs="+",
        choices=sorted(LAYOUTS),
        default=list(LAYOUTS),
        help="worker layouts for (b) (default: both)",
    )
    parser.add_argument("--explain", action="store_true", help="print the plan of the scheduler's query")
    parser.add_argument("--place-worker", nargs=3, metavar=("URL", "JOB", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--bare-worker", nargs=3, metavar=("URL", "JOB", "OUT"), help=argparse.SUPPRESS)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    if args.place_worker:
        return place_worker(*args.place_worker)
    if args.bare_worker:
        return bare_worker(*args.bare_worker)
    host_counts: list[int] = sorted(args.hosts or (SMALL_HOST_COUNTS if args.small else HOST_COUNTS))
    placements = args.placements or (SMALL_PLACEMENTS if args.small else DEFAULT_PLACEMENTS)
    servers = args.servers or (SMALL_SERVERS if args.small else DEFAULT_SERVERS)
    report = Report("placement_throughput")
    env = environment()
    results: dict[tuple[str, int], PlaceResult] = {}
    plans: dict[int, tuple[float, str]] = {}
    created: list[CreateResult] = []
    health: tuple[int, float] | None = None
    with tempfile.TemporaryDirectory(prefix="sovra-bench-") as tmp, temporary_postgres() as url:
        work_dir = Path(tmp)
        migrate(url)
        project_id = create_project(url)
        log(f"creating {placements} consumer rows")
        consumers = create_consumers(url, project_id, placements)
        made = 0
        for hosts in host_counts:
            log(f"creating hosts {made} to {hosts - 1}")
            create_hosts(url, made, hosts)
            made = hosts
            results["bare", hosts] = run_placements(url, "bare", hosts, project_id, consumers, work_dir)
            results["sovra", hosts] = run_placements(url, "sovra", hosts, project_id, consumers, work_dir)
            plans[hosts] = explain_fast_path(url)  # after the run: the hosts hold the placements
        if not args.no_create:
            drop_hosts_from(url, host_counts[0])
            project, version = prepare_image(url, work_dir)
            for layout in args.layouts:
                created.append(run_creates(url, host_counts[0], servers, work_dir, layout, project, version))
            health = time_health_check(url)

    settings = results["sovra", host_counts[0]].settings
    report.section(
        f"(a) {placements} placements per scenario, {PROCESSES} processes, PostgreSQL;"
        " SCS-1V-2-sized requests"
        f" ({VCPUS} vCPU, {MEMORY_MIB} MiB, {DISK_GIB} GiB) on hosts of {HOST_CPUS * 4} vCPUs,"
        f" {HOST_MEMORY_MIB} MiB, {HOST_DISK_GIB} GiB"
    )
    report.note(
        f"scheduler: weigher {settings.get('weigher')}, subset size {settings.get('subset_size')},"
        f" max attempts {settings.get('max_attempts')}"
    )
    for hosts in host_counts:
        for kind in ("sovra", "bare"):
            r = results[kind, hosts]
            label = "scheduler.place()" if kind == "sovra" else "bare claim (baseline)"
            report.figure(
                f"{label}, {hosts} hosts",
                f"{r.per_second:8.0f} placements/s   ({r.seconds:.2f} s; {r.conflicts} claims lost and"
                f" retried = {r.conflicts / r.placements:.2f} per request; {r.failed} requests failed)",
            )
            report.figure("    per placement", r.latencies.line())
            report.figure(
                "    CPU per placement",
                f"processes {r.worker_cpu_ms:6.3f} ms, PostgreSQL backends {r.database_cpu_ms:6.3f} ms",
            )
        c = results["sovra", hosts].checks
        report.figure(
            f"    checks after scheduler.place(), {hosts} hosts",
            f"{c['with_one_allocation']}/{c['consumers']} consumers with one allocation"
            f" ({c['without_allocation']} without: the failed requests),"
            f" {c['overcommitted_hosts']} overcommitted hosts,"
            f" {c['hosts_not_matching_allocations']} hosts whose usage differs from their allocations;"
            f" {c['hosts_used']} hosts used,"
            f" {c['servers_per_host'][0]}-{c['servers_per_host'][1]} servers each",
        )
        report.figure(
            f"    fast-path query after the run, {hosts} hosts",
            f"{plans[hosts][0]:.3f} ms server-side (median of 5)",
        )
    report.section("ratios: scheduler / bare claim, same number of hosts and processes")
    for hosts in host_counts:
        s, b = results["sovra", hosts], results["bare", hosts]
        report.figure(
            f"{hosts} hosts",
            f"throughput {ratio(s.per_second, b.per_second):6.3f},"
            f" p50 {ratio(s.latencies.p50, b.latencies.p50):5.2f}x,"
            f" CPU {ratio(s.worker_cpu_ms, b.worker_cpu_ms):5.2f}x (processes),"
            f" {ratio(s.database_cpu_ms, b.database_cpu_ms):5.2f}x (PostgreSQL)",
        )
    low, high = host_counts[0], host_counts[-1]
    if low != high:
        report.section(f"scaling: {high} hosts / {low} hosts")
        for kind in ("sovra", "bare"):
            report.figure(
                kind,
                f"placements/s {ratio(results[kind, high].per_second, results[kind, low].per_second):6.3f}x,"
                f" p50 {ratio(results[kind, high].latencies.p50, results[kind, low].latencies.p50):6.3f}x",
            )
    if args.explain:
        for hosts in host_counts:
            report.section(f"plan of the fast-path query, {hosts} hosts")
            for line in plans[hosts][1].splitlines():
                report.note(line)
    for run in created:
        report.section(
            f"(b) full server.create: {run.servers} servers ({FLAVOR}, 1 MiB raw image)"
            f" on {run.hosts} fake hosts, {LAYOUTS[run.layout]}"
        )
        report.figure(
            "servers created (operation SUCCEEDED)",
            f"{run.per_second:8.1f} servers/s   ({run.succeeded}/{run.servers} in {run.seconds:.1f} s,"
            f" {run.attempts_over_one} needed a second attempt)",
        )
        report.figure(
            f"    in the first {EARLY_WINDOW_SECONDS:.0f} s (no power resync yet)",
            f"{run.early_per_second:8.1f} servers/s   ({run.early} servers)",
        )
        report.figure("    operation run time (started -> finished)", run.run_latencies.line())
        for name, lat in run.steps.items():
            report.figure(f"    step {name}", lat.line())
        report.figure(
            "    CPU per server",
            f"workers {run.worker_cpu_ms:6.2f} ms, PostgreSQL backends {run.database_cpu_ms:6.2f} ms",
        )
        report.figure(
            "    server states when the run ended",
            ", ".join(f"{k} {v}" for k, v in sorted(run.states.items())),
        )
        for fault, n in run.faults.items():
            report.note(f"    not ACTIVE: {n} x {fault}")
        report.figure(
            "    checks",
            f"{run.checks['allocations']} allocations,"
            f" {run.checks['overcommitted_hosts']} overcommitted hosts",
        )
    if health is not None:
        report.section("periodic work of every worker process (timed in this process after (b))")
        report.figure(
            f"one host health check round, {health[0]} hosts",
            f"{health[1]:6.2f} s   (each worker process runs one every 30 s)",
        )
    report.print(env)

    all_checks = all(checks_ok(results["sovra", h]) for h in host_counts)
    rates = {h: results["sovra", h].per_second for h in host_counts}
    failed = sum(results["sovra", h].failed for h in host_counts)
    met = all(rate >= TARGET_PLACEMENTS_PER_SECOND for rate in rates.values()) and all_checks and not failed
    summary = (
        ", ".join(f"{rates[h]:.0f} placements/s on {h} hosts" for h in host_counts)
        + f" with {PROCESSES} processes (target >= {TARGET_PLACEMENTS_PER_SECOND:.0f});"
        + f" {ratio(rates[high], results['bare', high].per_second):.3f} of the bare claim on {high} hosts;"
        + f" {failed} requests failed (NoValidHost after lost claims);"
        + f" overcommit/allocation checks {'passed' if all_checks else 'FAILED'}"
    )
    for run in created:
        summary += (
            f"; server.create {run.per_second:.1f} servers/s ({LAYOUTS[run.layout]}, {run.servers} servers)"
        )
    return report.finish(met, summary)


if __name__ == "__main__":
    sys.exit(main())
