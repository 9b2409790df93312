"""Single-object GET latency of the API (GET /v1/projects/{id}) under 50 concurrent clients.

The API runs as a real ``sovra server`` process; the load comes from a separate load-generator
process (asyncio + httpx, one keep-alive connection per client). Two load shapes, both reported:

* closed loop: each of the 50 clients sends its next request as soon as the last one returned
  (no think time), so latency is about clients / throughput: a saturation figure;
* open loop: requests arrive at a fixed total rate (default 200 req/s) as Poisson arrivals spread
  over the 50 clients; latency is measured from the scheduled send time, so a server that falls
  behind shows it (no coordinated omission).

Baseline, same run, same load: a bare Starlette app served by uvicorn the same way, whose one
route reads the same row with one ``SELECT`` through SQLAlchemy (autocommit, no pool pre-ping) and
returns it as JSON. PostgreSQL first, then the same on SQLite (``--no-sqlite`` skips it).

    .venv/bin/python bench/api_latency.py [--small] [--rate 200] [--no-sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _common import (
    PYTHON,
    SOVRA,
    Child,
    Latencies,
    Report,
    children,
    cpu_seconds,
    environment,
    free_port,
    log,
    migrate,
    parse_args,
    ratio,
    temporary_postgres,
    wait_http_ok,
)

TARGET_P99_MS = 50.0
CLIENTS = 50
PROJECTS = 200
BARE_PATH = "/bare/projects/{id}"
SOVRA_PATH = "/v1/projects/{id}"

# -- the baseline server ---------------------------------------------------------------------------


def serve_bare(port: int, database_url: str) -> int:
    """A bare ASGI app: one route, one SELECT of the row, JSON out. Served like ``sovra server``."""
    import sqlalchemy as sa
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from sovra.store.database import normalise_url

    engine = sa.create_engine(normalise_url(database_url), pool_size=10, max_overflow=20).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    select = sa.text(
        "SELECT id, kind, name, project_id, labels, spec, status, generation, version, created_at,"
        " updated_at FROM resources WHERE id = :id"
    )

    def get_project(request: Request) -> JSONResponse:
        with engine.connect() as conn:
            row = conn.execute(select, {"id": request.path_params["id"]}).mappings().first()
        if row is None:
            return JSONResponse({"detail": "not found"}, 404)
        return JSONResponse({k: str(v) if k.endswith("_at") else v for k, v in row.items()})

    def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[Route(BARE_PATH.replace("{id}", "{id:str}"), get_project), Route("/healthz", healthz)]
    )
    uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    ).run()
    return 0


# -- the load generator (a separate process) -------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    path: str
    token: str
    ids: list[str]
    clients: int
    seconds: float
    warmup: float
    rate: float | None  # None: closed loop

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


async def _load(spec: LoadSpec) -> dict[str, Any]:
    latencies: list[float] = []
    service: list[float] = []
    errors = completed = 0
    headers = {"Authorization": f"Bearer {spec.token}"}
    tls = ssl.create_default_context()  # unused over http, but httpx builds one per client otherwise
    connected = 0
    go = asyncio.Event()
    start = record_from = end = 0.0

    async def client(index: int) -> None:
        nonlocal errors, completed, connected, start, record_from, end
        rng = random.Random(index)
        ids = spec.ids[index :: spec.clients] or spec.ids
        async with httpx.AsyncClient(
            base_url=spec.base_url,
            headers=headers,
            timeout=30,
            verify=tls,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        ) as http:
            await http.get("/healthz")  # every connection is open before the clock starts
            connected += 1
            if connected == spec.clients:
                start = time.perf_counter()
                record_from = start + spec.warmup
                end = record_from + spec.seconds
                go.set()
            await go.wait()
            scheduled = start
            count = 0
            while True:
                if spec.rate is not None:
                    scheduled += rng.expovariate(spec.rate / spec.clients)
                    delay = scheduled - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    scheduled = time.perf_counter()
                if scheduled >= end:
                    return
                sent = time.perf_counter()
                response = await http.get(spec.path.format(id=ids[count % len(ids)]))
                done = time.perf_counter()
                count += 1
                completed += 1
                if scheduled < record_from:
                    continue
                if response.status_code != 200:
                    errors += 1
                latencies.append(done - (scheduled if spec.rate is not None else sent))
                service.append(done - sent)

    await asyncio.gather(*(client(i) for i in range(spec.clients)))
    return {
        "latencies": latencies,
        "service": service,
        "errors": errors,
        "seconds": spec.seconds,
        "completed": completed,  # warm-up included
    }


def load_main(raw: str) -> int:
    spec = LoadSpec(**json.loads(raw))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_load(spec))
    sys.stdout.write(json.dumps(result))
    return 0


@dataclass(frozen=True)
class LoadResult:
    latency: Latencies  # closed loop: per request; open loop: from the scheduled send time
    service: Latencies  # from the actual send, both loops
    requests_per_second: float
    errors: int
    server_cpu_ms: float  # CPU of the server process per request (warm-up included)


def run_load(spec: LoadSpec, server_pid: int) -> LoadResult:
    """Start the load generator as its own process and collect its samples."""
    cpu_before = cpu_seconds(server_pid)
    completed = subprocess.run(
        [PYTHON, __file__, "--load", spec.to_json()],
        capture_output=True,
        timeout=spec.seconds + spec.warmup + 120,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{completed.stderr.decode(errors='replace')[-3000:]}")
    cpu = cpu_seconds(server_pid) - cpu_before
    data = json.loads(completed.stdout)
    return LoadResult(
        latency=Latencies.of_seconds(data["latencies"]),
        service=Latencies.of_seconds(data["service"]),
        requests_per_second=len(data["latencies"]) / data["seconds"],
        errors=data["errors"],
        server_cpu_ms=1000 * cpu / max(1, data["completed"]),
    )


# -- one backend -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str
    path: str
    pid: int


def create_projects(base_url: str, token: str, count: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        for index in range(count):
            response = http.post(
                "/v1/projects", json={"name": f"bench-{index}", "labels": {"bench": "api-latency"}}
            )
            response.raise_for_status()
            ids.append(response.json()["id"])
    return ids


def start_servers(
    spawn: Any, backend: str, database_url: str, token: str, work_dir: Path
) -> tuple[Child, Target, Target]:
    port, bare_port = free_port(), free_port()
    env = {
        "SOVRA_DATA_DIR": str(work_dir / backend),
        "SOVRA_ADMIN_TOKEN": token,
        # All 50 clients share one principal: lift its rate limit, or most requests become 429s.
        "SOVRA_RATE_LIMIT_PER_SECOND": "1000000",
        "SOVRA_RATE_LIMIT_BURST": "1000000",
    }
    if backend == "postgresql":
        env["SOVRA_DATABASE_URL"] = database_url
    sovra = spawn(f"sovra-server-{backend}", [SOVRA, "api", "--port", str(port)], log_dir=work_dir, env=env)
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", sovra)  # migrated once the API answers
    bare = spawn(
        f"bare-server-{backend}",
        [PYTHON, __file__, "--serve-bare", str(bare_port), "--database-url", database_url],
        log_dir=work_dir,
    )
    wait_http_ok(f"http://127.0.0.1:{bare_port}/healthz", bare)
    return (
        sovra,
        Target("sovra", f"http://127.0.0.1:{port}", SOVRA_PATH, sovra.process.pid),
        Target("bare", f"http://127.0.0.1:{bare_port}", BARE_PATH, bare.process.pid),
    )


def measure_backend(
    backend: str, database_url: str, args: argparse.Namespace, work_dir: Path
) -> dict[tuple[str, str], LoadResult]:
    token = secrets.token_urlsafe(16)
    seconds, warmup = (3.0, 1.0) if args.small else (8.0, 2.0)
    results: dict[tuple[str, str], LoadResult] = {}
    with children() as spawn:
        sovra, *targets = start_servers(spawn, backend, database_url, token, work_dir)
        ids = create_projects(targets[0].base_url, token, 50 if args.small else PROJECTS)
        for loop, rate in (("closed", None), ("open", args.rate)):
            for target in targets:  # sovra then bare, back to back, for each load shape
                log(f"{backend}: {target.name}, {loop} loop")
                spec = LoadSpec(target.base_url, target.path, token, ids, CLIENTS, seconds, warmup, rate)
                results[target.name, loop] = run_load(spec, target.pid)
                sovra.check_alive()
    return results


# -- main ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop total rate, req/s")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)


def describe(report: Report, label: str, result: LoadResult) -> None:
    report.figure(
        label,
        f"p50 {result.latency.p50:7.2f}  p99 {result.latency.p99:7.2f}  max {result.latency.max:7.2f} ms"
        f"   {result.requests_per_second:6.0f} req/s   server CPU {result.server_cpu_ms:5.2f} ms/req"
        + (f"   {result.errors} errors" if result.errors else ""),
    )


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    if args.load:
        return load_main(args.load)
    if args.serve_bare:
        return serve_bare(args.serve_bare, args.database_url)
    report = Report("api_latency")
    env = environment()
    measured: dict[str, dict[tuple[str, str], LoadResult]] = {}
    with tempfile.TemporaryDirectory(prefix="sovra-bench-") as tmp:
        work = Path(tmp)
        with temporary_postgres() as url:
            migrate(url)
            measured["postgresql"] = measure_backend("postgresql", url, args, work)
        if not args.no_sqlite:
            sqlite_url = f"sqlite:///{work / 'sqlite' / 'sovra.db'}"
            measured["sqlite"] = measure_backend("sqlite", sqlite_url, args, work)

    for backend, results in measured.items():
        report.section(
            f"{backend}: GET one project, {CLIENTS} clients, separate load-generator process (latency in ms)"
        )
        for loop, heading in (
            ("closed", "closed loop, no think time (latency ~ clients / throughput)"),
            ("open", f"open loop, {args.rate:.0f} req/s Poisson arrivals (from scheduled send)"),
        ):
            report.note(heading)
            describe(report, "  sovra server", results["sovra", loop])
            describe(report, "  bare endpoint, one SELECT (baseline)", results["bare", loop])
            sovra, bare = results["sovra", loop], results["bare", loop]
            report.figure(
                "  ratio sovra / baseline",
                f"p50 {ratio(sovra.latency.p50, bare.latency.p50):7.2f}x p99 "
                f"{ratio(sovra.latency.p99, bare.latency.p99):7.2f}x   throughput "
                f"{ratio(sovra.requests_per_second, bare.requests_per_second):.2f}x   server CPU/req "
                f"{ratio(sovra.server_cpu_ms, bare.server_cpu_ms):.2f}x",
            )
        open_service = results["sovra", "open"].service
        report.note(f"open loop, sovra, from the actual send: {open_service.line()}")
    report.print(env)

    failed = sum(r.errors for results in measured.values() for r in results.values())
    pg = measured["postgresql"]
    closed_p99, open_p99 = pg["sovra", "closed"].latency.p99, pg["sovra", "open"].latency.p99
    met_closed, met_open = closed_p99 < TARGET_P99_MS, open_p99 < TARGET_P99_MS
    return report.finish(
        met_closed and met_open,
        f"PostgreSQL p99 closed loop {closed_p99:.1f} ms ({'met' if met_closed else 'missed'}), "
        f"open loop {args.rate:.0f} req/s {open_p99:.1f} ms ({'met' if met_open else 'missed'}); "
        f"target p99 < {TARGET_P99_MS:.0f} ms; closed-loop p99 vs baseline "
        f"{ratio(closed_p99, pg['bare', 'closed'].latency.p99):.2f}x, "
        f"{pg['sovra', 'closed'].requests_per_second:.0f} vs "
        f"{pg['bare', 'closed'].requests_per_second:.0f} req/s"
        + (f"; WARNING {failed} responses were not 200, figures not valid" if failed else ""),
    )


if __name__ == "__main__":
    sys.exit(main())
