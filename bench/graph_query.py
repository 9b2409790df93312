"""The dependents query (``sovra.store.graph.dependents``) in a 1,000,000-edge graph on PostgreSQL.

The graph, bulk-loaded with COPY and then VACUUM ANALYZEd:

* fan-out trees: a root with 10 children, each with 10, each with 10 (1,110 dependents per root;
  edge types ``owns``, ``uses``, ``runs-on`` by level);
* project-sized subgraphs: a Project owning a network, subnets, volumes and servers, with ``uses``
  edges between them (for ``teardown_order`` and ``dependencies``);
* random background edges between other resources (all four types) up to 1,000,000 edges in all.
  They never touch the trees or projects, so every query answers exactly what it should.

Each query is timed as the API runs it: a read transaction from the pool around the repository
call, Python models included. Baseline, same run, same connection pool: the single-level indexed
lookup of a root's direct dependents (one SELECT on ``edges`` by ``dependency_id``).

    .venv/bin/python bench/graph_query.py [--small] [--edges N]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection

from _common import (
    Latencies,
    Report,
    environment,
    libpq_url,
    log,
    migrate,
    parse_args,
    ratio,
    temporary_postgres,
    time_calls,
)
from sovra.domain.ids import new_id
from sovra.store import graph
from sovra.store.database import Database
from sovra.store.schema import edges

TARGET_MS = 50.0
FAN_OUT = 10
TREE_SIZE = 1 + FAN_OUT + FAN_OUT**2 + FAN_OUT**3  # root included
DEPENDENTS_PER_ROOT = TREE_SIZE - 1
TREE_EDGE_TYPES = ("owns", "uses", "runs-on")  # level 1, 2, 3
EDGE_TYPES = ("owns", "uses", "runs-on", "derived-from")
PROJECT_SUBNETS, PROJECT_SERVERS = 9, 95  # + 1 network + 95 volumes = 200 resources per project
SEED = 20240611

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    edges: int
    trees: int
    projects: int
    background_resources: int
    rounds: int


def sizes(args: argparse.Namespace) -> Sizes:
    if args.small:
        base = Sizes(edges=200_000, trees=3, projects=2, background_resources=40_000, rounds=10)
    else:
        base = Sizes(edges=1_000_000, trees=10, projects=5, background_resources=200_000, rounds=20)
    if args.edges:
        return Sizes(args.edges, base.trees, base.projects, max(1000, args.edges // 5), base.rounds)
    return base


# -- the graph -------------------------------------------------------------------------------------


@dataclass
class Graph:
    """What was loaded: resources as COPY rows, edges as (source, target, type)."""

    resources: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # id kind name project
    edges: list[tuple[str, str, str]] = field(default_factory=list)
    tree_roots: list[str] = field(default_factory=list)
    tree_leaves: list[str] = field(default_factory=list)
    projects: list[str] = field(default_factory=list)
    project_servers: list[str] = field(default_factory=list)

    def add(self, kind: str, name: str, project_id: str | None = None) -> str:
        rid = new_id()
        self.resources.append((rid, kind, name, project_id))
        return rid


def build_trees(g: Graph, count: int) -> None:
    for t in range(count):
        root = g.add("Network", f"tree-{t}")
        g.tree_roots.append(root)
        level = [root]
        for depth, edge_type in enumerate(TREE_EDGE_TYPES, start=1):
            below = []
            for parent in level:
                for _ in range(FAN_OUT):
                    child = g.add("Server", f"tree-{t}-{depth}-{len(below)}")
                    # dependent = child, dependency = parent, whatever the type (see domain.edges)
                    g.edges.append(
                        (parent, child, edge_type) if edge_type == "owns" else (child, parent, edge_type)
                    )
                    below.append(child)
            level = below
        g.tree_leaves.extend(level[:: FAN_OUT**2])


def build_projects(g: Graph, count: int) -> None:
    for p in range(count):
        project = g.add("Project", f"project-{p}")
        g.projects.append(project)
        network = g.add("Network", "net", project)
        subnets = [g.add("Subnet", f"subnet-{i}", project) for i in range(PROJECT_SUBNETS)]
        for i in range(PROJECT_SERVERS):
            volume = g.add("Volume", f"vol-{i}", project)
            server = g.add("Server", f"server-{i}", project)
            g.edges += [(project, volume, "owns"), (project, server, "owns")]
            g.edges += [(server, volume, "uses"), (server, subnets[i % PROJECT_SUBNETS], "uses")]
            if i % 20 == 0:
                g.project_servers.append(server)
        g.edges.append((project, network, "owns"))
        for subnet in subnets:
            g.edges += [(project, subnet, "owns"), (subnet, network, "uses")]


def build_background(g: Graph, count: int, edge_count: int, rng: random.Random) -> None:
    nodes = [g.add(rng.choice(("Server", "Volume", "Image", "Port")), f"bg-{i}") for i in range(count)]
    seen: set[tuple[str, str, str]] = set()
    while len(seen) < edge_count:
        source, target = rng.choice(nodes), rng.choice(nodes)
        if source != target:
            seen.add((source, target, rng.choice(EDGE_TYPES)))
    g.edges.extend(seen)


def build_graph(s: Sizes) -> Graph:
    rng = random.Random(SEED)
    g = Graph()
    build_trees(g, s.trees)
    build_projects(g, s.projects)
    build_background(g, s.background_resources, s.edges - len(g.edges), rng)
    assert len(g.edges) == s.edges, len(g.edges)
    return g


def load(url: str, g: Graph) -> None:
    """COPY everything in, then VACUUM ANALYZE as autovacuum eventually would.

    For speed the secondary indexes of ``edges`` are dropped before the COPY and rebuilt from
    their own definitions after it, and foreign-key triggers are off for the loading session
    (the data is valid by construction).
    """
    now = datetime.now(UTC)
    status = json.dumps({"state": "ACTIVE", "conditions": [], "observed_generation": 0, "operation_id": None})
    with psycopg.connect(libpq_url(url)) as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'edges'"
            " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute("SET session_replication_role = replica")
        with conn.cursor().copy(
            "COPY resources (id, kind, name, project_id, labels, spec, status, generation, version,"
            " created_at, updated_at) FROM STDIN"
        ) as copy:
            for rid, kind, name, project in g.resources:
                copy.write_row((rid, kind, name, project, "{}", "{}", status, 1, 1, now, now))
        log(f"copied {len(g.resources)} resources")
        with conn.cursor().copy("COPY edges (source_id, target_id, type, created_at) FROM STDIN") as copy:
            for source, target, edge_type in g.edges:
                copy.write_row((source, target, edge_type, now))
        log(f"copied {len(g.edges)} edges")
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            conn.execute(definition)
        log(f"rebuilt {len(indexes)} indexes")
        conn.commit()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE resources")
        conn.execute("VACUUM ANALYZE edges")


# -- measuring -------------------------------------------------------------------------------------


def in_read(db: Database, query: Callable[[Connection], T]) -> Callable[[], T]:
    def call() -> T:
        with db.read() as conn:
            return query(conn)

    return call


def direct_dependents(conn: Connection, root: str) -> list[str]:
    """The baseline: one indexed SELECT of the root's direct dependents."""
    return list(conn.execute(sa.select(edges.c.dependent_id).where(edges.c.dependency_id == root)).scalars())


@contextmanager
def captured_sql(db: Database) -> Iterator[list[tuple[str, Any]]]:
    """The statements (and parameters) the driver is given while the block runs."""
    seen: list[tuple[str, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def explain(db: Database, call: Callable[[], object], marker: str) -> tuple[float, list[str]]:
    """EXPLAIN ANALYZE the statement containing ``marker`` that ``call`` runs: (server ms, plan)."""
    with captured_sql(db) as seen:
        call()
    statement, parameters = next((s, p) for s, p in seen if marker in s)
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        plan = [row[0] for row in cursor.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    total = next(float(line.split(":")[1].split()[0]) for line in plan if line.startswith("Execution Time"))
    return total, plan


class FullCollections:
    """Full (generation 2) garbage collections of this process while measuring: they make the tail."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._callback)


@dataclass
class Samples:
    by_name: dict[str, list[float]] = field(default_factory=dict)

    def time(self, name: str, call: Callable[[], object], runs: int = 1) -> None:
        self.by_name.setdefault(name, []).extend(time_calls(call, runs))

    def summary(self, name: str) -> Latencies:
        return Latencies.of_seconds(self.by_name[name])


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def measure(db: Database, g: Graph, rounds: int, freeze: bool) -> tuple[Samples, list[float]]:
    samples = Samples()
    # Correctness first (and a warm-up round that is not counted).
    for root in g.tree_roots:
        found = in_read(db, lambda c, r=root: graph.dependents(c, r))()
        check(len(found) == DEPENDENTS_PER_ROOT, f"dependents of a tree root: {len(found)}")
        direct = in_read(db, lambda c, r=root: direct_dependents(c, r))()
        check(len(direct) == FAN_OUT, f"direct dependents of a tree root: {len(direct)}")
    for project in g.projects:
        order = in_read(db, lambda c, p=project: graph.teardown_order(c, p))()
        check(len(order) == 2 + PROJECT_SUBNETS + 2 * PROJECT_SERVERS, f"teardown order: {len(order)}")
    # Only the ids are needed now: let the process look like an API process, not a data generator.
    g.resources.clear()
    g.edges.clear()
    gc.collect()
    if freeze:  # what a server would do once started: keep its start-up objects out of full collections
        gc.freeze()
    with FullCollections() as collections:
        measure_rounds(db, g, rounds, samples)
    return samples, collections.pauses


def measure_rounds(db: Database, g: Graph, rounds: int, samples: Samples) -> None:
    for round_number in range(rounds):
        log(f"round {round_number + 1}/{rounds}")
        for root in g.tree_roots:  # baseline and query back to back, so drift hits both alike
            samples.time("baseline", in_read(db, lambda c, r=root: direct_dependents(c, r)))
            samples.time("dependents", in_read(db, lambda c, r=root: graph.dependents(c, r)))
        for leaf in g.tree_leaves:
            samples.time("dependencies_leaf", in_read(db, lambda c, r=leaf: graph.dependencies(c, r)))
        for project in g.projects:
            samples.time("teardown_order", in_read(db, lambda c, p=project: graph.teardown_order(c, p)))
            samples.time("dependents_project", in_read(db, lambda c, p=project: graph.dependents(c, p)))
        for server in g.project_servers:
            samples.time("dependencies_server", in_read(db, lambda c, r=server: graph.dependencies(c, r)))


# -- main ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edges", type=int, help="edges in all (default 1,000,000; --small 200,000)")
    parser.add_argument("--explain", action="store_true", help="print the dependents query plan")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() before timing (the proposed server start-up fix)",
    )


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    s = sizes(args)
    env = environment()
    report = Report("graph_query")
    with temporary_postgres() as url:
        migrate(url)
        started = time.perf_counter()
        g = build_graph(s)
        elapsed = time.perf_counter() - started
        log(f"built {len(g.resources)} resources, {len(g.edges)} edges in {elapsed:.1f} s")
        load(url, g)
        log(f"loaded and analysed in {time.perf_counter() - started:.1f} s")
        db = Database(url)
        try:
            resource_count = len(g.resources)
            samples, pauses = measure(db, g, s.rounds, args.gc_freeze)
            root = g.tree_roots[0]
            server_ms, plan = explain(db, in_read(db, lambda c: graph.dependents(c, root)), "RECURSIVE")
            baseline_server_ms, _ = explain(db, in_read(db, lambda c: direct_dependents(c, root)), "edges")
        finally:
            db.dispose()

    dependents, baseline = samples.summary("dependents"), samples.summary("baseline")
    report.section(
        f"{s.edges:,} edges, {resource_count:,} resources; {s.trees} fan-out roots x {s.rounds} rounds; "
        "each call in its own read transaction (ms)"
    )
    report.figure(f"dependents(root), {DEPENDENTS_PER_ROOT:,} dependents, 3 levels", dependents.line())
    report.figure("baseline: direct dependents, one indexed SELECT", baseline.line())
    report.figure(
        "ratio dependents / baseline",
        f"p50 {ratio(dependents.p50, baseline.p50):.1f}x   p99 {ratio(dependents.p99, baseline.p99):.1f}x",
    )
    report.figure(
        "server execution time (EXPLAIN ANALYZE)",
        f"dependents {server_ms:.2f} ms, baseline {baseline_server_ms:.3f} ms",
    )
    report.figure(
        "full GC pauses of this process meanwhile",
        f"{len(pauses)}, longest {max(pauses, default=0) * 1000:.1f} ms (they land in the tail)"
        + (" [gc.freeze() applied]" if args.gc_freeze else ""),
    )
    report.section(f"project-sized subgraphs ({2 + PROJECT_SUBNETS + 2 * PROJECT_SERVERS} resources each)")
    for name, label in (
        ("teardown_order", "teardown_order(project)"),
        ("dependents_project", "dependents(project)"),
        ("dependencies_server", "dependencies(server in a project)"),
        ("dependencies_leaf", "dependencies(tree leaf, 3 levels up)"),
    ):
        report.figure(label, samples.summary(name).line())
    if args.explain:
        report.section("plan of dependents(root)")
        for line in plan:
            report.note(line)
    report.print(env)
    met = dependents.p99 < TARGET_MS
    return report.finish(
        met,
        f"dependents of a 3-level fan-out ({DEPENDENTS_PER_ROOT:,}) in {s.edges:,} edges: "
        f"p50 {dependents.p50:.1f} ms, p99 {dependents.p99:.1f} ms (target p99 < {TARGET_MS:.0f} ms); "
        f"{ratio(dependents.p50, baseline.p50):.1f}x the single-level lookup (p50 {baseline.p50:.2f} ms)",
    )


if __name__ == "__main__":
    sys.exit(main())
