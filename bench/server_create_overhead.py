"""The control-plane overhead of a real server create -> ACTIVE, against ``virsh define`` +
``virsh start`` of the same domain in the same run.

A real Sovra runs in child processes: ``sovra api`` and two ``sovra worker`` (SQLite in a
temporary data directory, as ``sovra up`` keeps it; ``--postgres`` uses a throw-away PostgreSQL
database instead). The local libvirt (``qemu:///system``, started by ``scripts/lib/libvirt.sh``'s
``ensure_libvirt`` when needed) is registered as a host and the tiny guest image (the test suite's
cached build under ``/var/cache/sovra-test``, built when missing) is imported. One server is created
and deleted first, so the host holds the image in its cache: the timed creates transfer nothing.

* Sovra, N times (default 5, ``--small`` 2): ``POST /v1/projects/{p}/servers`` -> ``GET`` every
  50 ms until the state is ACTIVE; then delete it. The operation's record says where the time went:
  queue (created -> claimed by a worker), the steps schedule, image, disks, boot, and what lies
  between them.
* Baseline, N times: the domain XML Sovra renders for such a server (``sovra.virt.domain_xml`` from
  the same ``DomainSpec``), its disks made the same way beforehand and not timed (qcow2 overlay over
  the cached base image, NoCloud seed, console log volume); timed: ``virsh -c qemu:///system define``
  + ``virsh start`` until ``virsh domstate`` says running. Then destroy, undefine, delete volumes.

Target: Sovra - virsh <= 1 s (medians). Everything made (domains, volumes, processes, database) is
removed at the end, also when the run fails or is interrupted.

    .venv/bin/python bench/server_create_overhead.py [--small] [--rounds N] [--postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from _common import (
    ROOT,
    SOVRA,
    Report,
    children,
    free_port,
    log,
    migrate,
    parse_args,
    temporary_postgres,
    upload_image_version,
    wait_http_ok,
    wait_operation,
)

TARGET_OVERHEAD_SECONDS = 1.0
URI = "qemu:///system"
FLAVOR = "SCS-1L-1"  # 1 vCPU, 1 GiB: what the end-to-end tests boot the tiny image with
POLL_SECONDS = 0.05
DEFAULT_ROUNDS = 5
SMALL_ROUNDS = 2
WORKERS = 2
STEPS = ("schedule", "image", "disks", "boot")


def ensure_libvirt() -> None:
    """Start the local libvirt if it does not answer (as tests/support/libvirt_daemon.py does)."""
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail; source scripts/lib/libvirt.sh && ensure_libvirt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ensure_libvirt exited {result.returncode}:\n{result.stdout}{result.stderr}")


def tiny_image() -> Any:
    """The tiny guest's BuildResult from the test suite's cache (built there when missing)."""
    sys.path.insert(0, str(ROOT))
    from tests.support.guest_images import cached_build

    return cached_build("good")


def seconds_between(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


# -- what was made, so that it can be removed whatever happens ------------------------------------


@dataclass
class Leftovers:
    """Domains and volumes this run made on the host (removed directly through libvirt at the end,
    whatever the API did); nothing else on the host is touched."""

    domains: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)

    def server(self, server_id: str) -> None:
        from sovra.compute.server_ops import volumes_of
        from sovra.virt.domain_xml import console_log_volume

        self.domains.add(server_id)
        self.volumes.update(volumes_of(server_id))
        self.volumes.add(console_log_volume(server_id))

    def image_copy(self, digest: str, operation_id: str) -> None:
        """The base volume a create's image step would upload (its name is unique to the operation),
        so that a run interrupted before the host's cache could be read still removes it."""
        from sovra.compute.host_images import VOLUME_PREFIX

        self.volumes.add(f"{VOLUME_PREFIX}{digest[:24]}-{operation_id[-12:]}.qcow2")

    def remove(self) -> list[str]:
        """Remove what is still there; the names of what had to be removed."""
        from sovra.virt.driver import connect

        removed: list[str] = []
        driver = connect(URI)
        try:
            present = driver.domains()
            for domain in sorted(self.domains):
                if domain in present:
                    driver.undefine_domain(domain)
                    removed.append(f"domain {domain}")
            for volume in sorted(self.volumes):
                if driver.volume(volume) is not None:
                    driver.delete_volume(volume)
                    removed.append(f"volume {volume}")
        finally:
            driver.close()
        return removed


# -- Sovra ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SovraRound:
    seconds: float  # POST sent -> GET saw ACTIVE
    post_seconds: float  # the POST alone
    segments: dict[str, float]  # where the time went, from the operation's record


@dataclass
class Setup:
    client: httpx.Client
    project_id: str
    version_id: str
    host_id: str
    accelerator: str
    digest: str  # SHA-256 of the disk hosts receive
    base_volume: str = ""


def create_and_wait(setup: Setup, name: str, leftovers: Leftovers) -> tuple[str, SovraRound]:
    client = setup.client
    sent_wall = time.time()
    started = time.perf_counter()
    response = client.post(
        f"/v1/projects/{setup.project_id}/servers",
        json={"name": name, "image": setup.version_id, "flavor": FLAVOR},
    )
    post_seconds = time.perf_counter() - started
    response.raise_for_status()
    server = response.json()
    leftovers.server(server["id"])
    leftovers.image_copy(setup.digest, server["operation_id"])
    while True:
        current = client.get(f"/v1/servers/{server['id']}").json()
        if current["state"] == "ACTIVE":
            seconds = time.perf_counter() - started
            break
        if current["state"] == "ERROR":
            raise RuntimeError(f"server {name} went to ERROR: {current['fault']}")
        if time.perf_counter() - started > 300:
            raise TimeoutError(f"server {name} not ACTIVE after 300 s ({current['state']})")
        time.sleep(POLL_SECONDS)
    operation = wait_operation(client, server["operation_id"], timeout=120)
    return server["id"], SovraRound(seconds, post_seconds, segments(operation, sent_wall, seconds))


def segments(operation: dict[str, Any], sent_wall: float, seconds: float) -> dict[str, float]:
    """The create from the client's POST to its ACTIVE, cut where the operation's record says."""
    steps = {s["name"]: s for s in operation["steps"] if s["state"] == "SUCCEEDED"}
    cut: dict[str, float] = {}
    cut["POST -> operation recorded"] = epoch(operation["created_at"]) - sent_wall
    cut["queued (until a worker claimed it)"] = (
        seconds_between(operation["created_at"], operation["started_at"]) or 0
    )
    previous = operation["started_at"]
    for name in STEPS:
        step = steps[name]
        cut[f"  before {name}"] = seconds_between(previous, step["started_at"]) or 0.0
        cut[f"step {name}"] = seconds_between(step["started_at"], step["finished_at"]) or 0.0
        previous = step["finished_at"]
    cut["after boot (until the operation ended)"] = seconds_between(previous, operation["finished_at"]) or 0.0
    cut["until the client saw ACTIVE (poll)"] = sent_wall + seconds - epoch(operation["finished_at"])
    return cut


def delete_server(setup: Setup, server_id: str) -> None:
    response = setup.client.delete(f"/v1/servers/{server_id}")
    if response.status_code == 404:
        return
    response.raise_for_status()
    wait_operation(setup.client, response.json()["id"], timeout=300)


def start_sovra(spawn: Any, work_dir: Path, database_url: str | None) -> tuple[str, str]:
    token = secrets.token_urlsafe(16)
    port = free_port()
    env = {
        "SOVRA_DATA_DIR": str(work_dir / "data"),
        "SOVRA_ADMIN_TOKEN": token,
        "SOVRA_API_PORT": str(port),
    }
    if database_url is not None:
        env["SOVRA_DATABASE_URL"] = database_url
    api = spawn("api", [SOVRA, "api"], log_dir=work_dir, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{base}/readyz", api)  # migrated before the workers start
    for index in range(WORKERS):
        spawn(f"worker-{index}", [SOVRA, "worker"], log_dir=work_dir, env=env)
    return base, token


def prepare(client: httpx.Client, build: Any) -> Setup:
    project = client.post("/v1/projects", json={"name": "bench-overhead"})
    project.raise_for_status()
    project_id = project.json()["id"]
    response = client.post("/v1/hosts", json={"name": "local", "spec": {"uri": URI}})
    response.raise_for_status()
    host = response.json()
    wait_operation(client, host["operation_id"], timeout=120)
    host = client.get(f"/v1/hosts/{host['id']}").json()
    if host["state"] != "enabled":
        raise RuntimeError(f"host {URI} is {host['state']}: {host.get('reason')}")
    version = upload_image_version(client, project_id, build.path, build.metadata)
    return Setup(
        client, project_id, str(version["id"]), host["id"], host["inventory"]["accelerator"], build.sha256
    )


# -- the baseline: virsh ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VirshRound:
    seconds: float  # define + start + domstate says running
    define: float
    start: float
    preparation: dict[str, float]  # the disks, made as Sovra makes them (not in ``seconds``)


def virsh(*args: str) -> str:
    result = subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def virsh_round(setup: Setup, build: Any, work_dir: Path, leftovers: Leftovers) -> VirshRound:
    """Disks and XML made as Sovra makes them (not timed); timed: define, start, running."""
    from sovra.compute import server_ops
    from sovra.domain.ids import new_id
    from sovra.images.nocloud import make_nocloud_seed
    from sovra.virt.domain_xml import render
    from sovra.virt.driver import DomainSpec, connect

    domain_id = new_id()
    leftovers.server(domain_id)
    flavor = {"vcpus": 1, "ram_mib": 1024, "disk_gib": 0}
    image = {"min_disk": build.metadata.get("min_disk", 1), "virtual_size": build.virtual_size}
    spec = DomainSpec(
        id=domain_id,
        vcpus=flavor["vcpus"],
        memory_mib=flavor["ram_mib"],
        accelerator=setup.accelerator,  # type: ignore[arg-type]
        root_volume=server_ops.root_volume(domain_id),
        seed_volume=server_ops.seed_volume(domain_id),
        arch=str(build.metadata.get("architecture", "x86_64")),
    )
    preparation: dict[str, float] = {}
    mark = time.perf_counter()

    def took(what: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        preparation[what] = now - mark
        mark = now

    driver: Any = connect(URI)
    try:
        took("connect")
        capacity = server_ops.root_disk_gib(flavor, image) * server_ops.GIB
        driver.create_overlay(spec.root_volume, setup.base_volume, "qcow2", capacity)
        took("qcow2 overlay (libvirt)")
        iso = make_nocloud_seed(
            work_dir / f"{domain_id}-seed.iso", instance_id=domain_id, hostname="virsh", user_data=""
        )
        took("NoCloud seed (pycdlib)")
        with iso.open("rb") as source:
            driver.upload_volume(spec.seed_volume, source, iso.stat().st_size)
        took("seed upload (libvirt)")
        console_log = driver._console_log(domain_id)  # the empty log volume define_domain makes first
        took("console log volume (libvirt)")
    finally:
        driver.close()
    xml = work_dir / f"{domain_id}.xml"
    xml.write_text(render(spec, console_log))

    started = time.perf_counter()
    virsh("define", str(xml))
    defined = time.perf_counter()
    virsh("start", domain_id)
    begun = time.perf_counter()
    while virsh("domstate", domain_id) != "running":
        if time.perf_counter() - started > 120:
            raise TimeoutError(f"domain {domain_id} not running after 120 s")
        time.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - started

    driver = connect(URI)
    try:
        driver.undefine_domain(domain_id)  # destroy, undefine, console logs
        for volume in (spec.root_volume, spec.seed_volume):
            driver.delete_volume(volume)
    finally:
        driver.close()
    return VirshRound(seconds, defined - started, begun - defined, preparation)


# -- main -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help=f"creates of each kind (default {DEFAULT_ROUNDS})")
    parser.add_argument(
        "--postgres", action="store_true", help="a throw-away PostgreSQL database, not SQLite"
    )


@contextlib.contextmanager
def database(use_postgres: bool) -> Iterator[str | None]:
    if not use_postgres:
        yield None  # SQLite in the data directory, as `sovra up` keeps it
        return
    with temporary_postgres() as url:
        migrate(url)
        yield url


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    rounds = args.rounds or (SMALL_ROUNDS if args.small else DEFAULT_ROUNDS)
    log("checking the local libvirt")
    ensure_libvirt()
    log("the tiny guest image (cached build, or built now)")
    build = tiny_image()
    report = Report("server_create_overhead")
    sovra_rounds: list[SovraRound] = []
    virsh_rounds: list[VirshRound] = []
    leftovers = Leftovers()
    warm_seconds = 0.0
    accelerator = "?"
    backend = "PostgreSQL" if args.postgres else "SQLite"
    with tempfile.TemporaryDirectory(prefix="sovra-bench-") as tmp, database(args.postgres) as url:
        work_dir = Path(tmp)
        try:
            with children() as spawn:
                base, token = start_sovra(spawn, work_dir, url)
                headers = {"Authorization": f"Bearer {token}"}
                with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
                    log(
                        f"Sovra up ({backend}, API + {WORKERS} workers);"
                        f" registering {URI}, importing the image"
                    )
                    setup = prepare(client, build)
                    accelerator = setup.accelerator
                    try:
                        log("warm-up: one server, so the host caches the image")
                        warm_id, warm = create_and_wait(setup, "warm-up", leftovers)
                        warm_seconds = warm.seconds
                        cache = client.get(f"/v1/hosts/{setup.host_id}").json()["image_cache"]
                        setup.base_volume = cache[0]["volume"]
                        leftovers.volumes.add(setup.base_volume)
                        delete_server(setup, warm_id)
                        # alternate the two, so that drift on a shared machine hits both alike
                        for index in range(rounds):
                            log(f"round {index + 1}/{rounds}: Sovra create -> ACTIVE")
                            server_id, measured = create_and_wait(setup, f"bench-{index}", leftovers)
                            sovra_rounds.append(measured)
                            delete_server(setup, server_id)
                            log(f"round {index + 1}/{rounds}: virsh define + start")
                            virsh_rounds.append(virsh_round(setup, build, work_dir, leftovers))
                    finally:
                        with contextlib.suppress(Exception):
                            remaining = client.get("/v1/servers").json()["items"]
                            for server in remaining:
                                delete_server(setup, server["id"])
                            deleted = client.delete(f"/v1/hosts/{setup.host_id}")  # drops its cached image
                            if deleted.status_code != 204:
                                log(f"could not delete the host: {deleted.status_code} {deleted.text}")
        finally:
            try:
                removed = leftovers.remove()
            except Exception as exc:  # say what may be left, do not hide the first error
                log(
                    f"could not check the host for leftovers ({exc}); domains {sorted(leftovers.domains)},"
                    f" volumes {sorted(leftovers.volumes)} may remain"
                )
            else:
                if removed:
                    log(f"removed what the API left behind: {', '.join(removed)}")

    sovra = statistics.median(r.seconds for r in sovra_rounds)
    bare = statistics.median(r.seconds for r in virsh_rounds)
    overhead = sovra - bare
    report.section(
        f"{rounds} creates each, {URI} ({accelerator}), tiny image cached on the host, flavor {FLAVOR};"
        f" Sovra: API + {WORKERS} worker processes on {backend}"
    )
    report.figure(
        "Sovra POST -> ACTIVE (poll every 50 ms)",
        f"median {sovra:6.3f} s   each: {', '.join(f'{r.seconds:.3f}' for r in sovra_rounds)}",
    )
    report.figure(
        "    of which the POST itself",
        f"median {statistics.median(r.post_seconds for r in sovra_rounds):6.3f} s",
    )
    report.figure(
        "virsh define + start -> running (baseline)",
        f"median {bare:6.3f} s   each: " + ", ".join(f"{r.seconds:.3f}" for r in virsh_rounds),
    )
    report.figure(
        "    define / start",
        f"median {statistics.median(r.define for r in virsh_rounds):6.3f} s /"
        f" {statistics.median(r.start for r in virsh_rounds):6.3f} s",
    )
    for what in virsh_rounds[0].preparation:
        values = [r.preparation[what] for r in virsh_rounds]
        report.figure(
            f"    not timed: {what}",
            f"median {statistics.median(values):6.3f} s   each: {', '.join(f'{v:.3f}' for v in values)}",
        )
    report.figure("warm-up create (image transferred to the host)", f"{warm_seconds:6.3f} s")
    report.section("overhead = Sovra - virsh (medians)")
    report.figure("overhead", f"{overhead:6.3f} s   (ratio {sovra / bare:5.2f}x)")
    report.section("where Sovra's time goes (median over the rounds, from the operation's record)")
    for name in sovra_rounds[0].segments:
        values = [r.segments[name] for r in sovra_rounds]
        report.figure(
            name, f"{statistics.median(values):6.3f} s   each: {', '.join(f'{v:.3f}' for v in values)}"
        )
    report.print(
        {
            "cpus": os.cpu_count(),
            "loadavg": "/".join(f"{x:.2f}" for x in os.getloadavg()),
            "database": backend,
            "libvirt": virsh("version", "--daemon").splitlines()[-1].split(":")[-1].strip(),
            "python": sys.version.split()[0],
        }
    )
    return report.finish(
        overhead <= TARGET_OVERHEAD_SECONDS,
        f"Sovra create -> ACTIVE {sovra:.3f} s vs virsh define + start {bare:.3f} s (medians of {rounds}):"
        f" overhead {overhead:.3f} s (target <= {TARGET_OVERHEAD_SECONDS:.0f} s), image cached, {backend}",
    )


if __name__ == "__main__":
    sys.exit(main())
