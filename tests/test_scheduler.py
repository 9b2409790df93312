"""The scheduler on both backends: each filter removes the right hosts for the right reason, the
weighers choose differently, server groups hold, and parallel schedulers on PostgreSQL never
overcommit a host."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.engine import Connection

from sovra.compute.hosts import health_check
from sovra.compute.scheduler import (
    MAX_NAMES,
    FilterReport,
    NoValidHost,
    Placement,
    PlacementRequest,
    fast_path,
    filters,
    place,
)
from sovra.config import Settings
from sovra.domain.errors import InvalidArgument, NotFound
from sovra.store import placement
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.store.schema import allocations, host_capacity, resources
from sovra.store.types import utcnow
from sovra.virt import fake
from tests.support.databases import migrated, temporary_postgres_database
from tests.test_placement_store import add_host, add_project, add_servers, assert_consistent

if TYPE_CHECKING:  # the spawned scheduler processes import this module: keep the API stack out
    import httpx

    from tests.support.live_server import LiveServer

# RAM needed by the requests below, and what the "small" hosts have: the numbers of the brief's example.
NEEDED_MIB, SMALL_MIB = 16384, 2048


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path, **overrides)


def _request(consumer: str, project: str, **changes: Any) -> PlacementRequest:
    return PlacementRequest(
        **{
            "consumer_id": consumer,
            "project_id": project,
            "vcpus": 4,
            "memory_mib": NEEDED_MIB,
            "disk_gib": 100,
            **changes,
        }
    )


def _host_name(db: Database, host_id: str) -> str:
    with db.read() as conn:
        return resource_store.get(conn, host_id).name


def _group(conn: Connection, project: str, name: str, policy: str) -> str:
    return resource_store.create(
        conn,
        kind="ServerGroup",
        name=name,
        project_id=project,
        labels={},
        spec={"policy": policy},
        state="ACTIVE",
    ).id


def _usage(conn: Connection, host_id: str) -> placement.HostUsage:
    found = placement.usage(conn, host_id)
    assert found is not None
    return found


def _no_valid_host(db: Database, request: PlacementRequest, settings: Settings) -> NoValidHost:
    with pytest.raises(NoValidHost) as refused:
        place(db, request, settings)
    with db.read() as conn:
        assert placement.allocation_of(conn, request.consumer_id) is None
        assert_consistent(conn)
    return refused.value


# -- filters and the explain path -------------------------------------------------------------------


def test_each_filter_removes_its_hosts_and_says_why(db: Database, tmp_path: Path) -> None:
    with db.write() as conn:
        project = add_project(conn)
        (server,) = add_servers(conn, project, 1)
        add_host(conn, "h1", memory_mib=SMALL_MIB, vcpus=16, disk_gib=200)
        add_host(conn, "h2", memory_mib=SMALL_MIB, vcpus=16, disk_gib=200)
        add_host(conn, "h3", state="maintenance", memory_mib=65536, vcpus=16, disk_gib=200)
        add_host(conn, "h4", state="down", memory_mib=65536, vcpus=16, disk_gib=200)
        add_host(conn, "h5", arch="aarch64", memory_mib=65536, vcpus=16, disk_gib=200)
        add_host(conn, "h6", accelerator="tcg", memory_mib=65536, vcpus=16, disk_gib=200)
        add_host(conn, "h7", vcpus=2, memory_mib=65536, disk_gib=200)
        add_host(conn, "h8", disk_gib=10, vcpus=16, memory_mib=65536)
        excluded = add_host(conn, "h9", vcpus=16, memory_mib=65536, disk_gib=200)
    request = _request(server, project, require_kvm=True, excluded_hosts=frozenset({excluded}))
    refused = _no_valid_host(db, request, _settings(tmp_path))
    assert refused.reports == [
        FilterReport("state", ["h4"], "down"),
        FilterReport("state", ["h3"], "maintenance"),
        FilterReport("architecture", ["h5"], "aarch64, the image needs x86_64"),
        FilterReport("accelerator", ["h6"], "tcg only, the image needs kvm"),
        FilterReport("capacity", ["h1", "h2"], "RAM: 2048 MiB free, 16384 needed"),
        FilterReport("capacity", ["h8"], "disk: 10 GiB free, 100 needed"),
        FilterReport("capacity", ["h7"], "vCPUs: 2 free, 4 needed"),
        FilterReport("excluded", ["h9"], "this server failed there before"),
    ]
    assert str(refused) == (
        "no valid host for 4 vCPUs, 16384 MiB, 100 GiB: "
        "state removed h4 (down); "
        "state removed h3 (maintenance); "
        "architecture removed h5 (aarch64, the image needs x86_64); "
        "accelerator removed h6 (tcg only, the image needs kvm); "
        "capacity removed h1, h2 (RAM: 2048 MiB free, 16384 needed); "
        "capacity removed h8 (disk: 10 GiB free, 100 needed); "
        "capacity removed h7 (vCPUs: 2 free, 4 needed); "
        "excluded removed h9 (this server failed there before)"
    )
    assert refused.status == 409 and refused.extensions["reports"][0] == {
        "filter": "state",
        "removed": ["h4"],
        "reason": "down",
        "more": 0,
    }


def test_each_filter_lets_the_right_host_through(db: Database, tmp_path: Path) -> None:
    """The same hosts, one request per filter that only the expected host passes."""
    with db.write() as conn:
        project = add_project(conn)
        servers = add_servers(conn, project, 4)
        add_host(conn, "tcg", accelerator="tcg", memory_mib=65536, disk_gib=1000)
        kvm = add_host(conn, "kvm", memory_mib=32768, disk_gib=1000)
        arm = add_host(conn, "arm", arch="aarch64", memory_mib=32768, disk_gib=1000)
    settings = _settings(tmp_path, scheduler_subset_size=1)
    assert place(db, _request(servers[0], project, require_kvm=True), settings).host_id == kvm
    assert place(db, _request(servers[1], project, arch="aarch64"), settings).host_id == arm
    assert (
        place(db, _request(servers[2], project, excluded_hosts=frozenset({kvm})), settings).host_name == "tcg"
    )
    placed = place(db, _request(servers[3], project, memory_mib=NEEDED_MIB), settings)
    assert placed == Placement(host_id=placed.host_id, host_name="tcg", uri="fake://tcg", accelerator="tcg")


def test_a_long_list_of_removed_hosts_is_cut_with_a_count(db: Database, tmp_path: Path) -> None:
    with db.write() as conn:
        project = add_project(conn)
        (server,) = add_servers(conn, project, 1)
        for i in range(MAX_NAMES + 5):
            add_host(conn, f"m{i:02d}", state="maintenance")
    refused = _no_valid_host(db, _request(server, project), _settings(tmp_path))
    (report,) = refused.reports
    assert report.removed == [f"m{i:02d}" for i in range(MAX_NAMES)] and report.more == 5
    assert str(refused).endswith("m19 and 5 more (maintenance)")


def test_without_hosts_the_answer_says_so(db: Database, tmp_path: Path) -> None:
    with db.write() as conn:
        project = add_project(conn)
        (server,) = add_servers(conn, project, 1)
    refused = _no_valid_host(db, _request(server, project), _settings(tmp_path))
    assert refused.reports == [] and str(refused).endswith(": no host has reported its inventory yet")


def test_capacity_counts_what_earlier_claims_took(db: Database, tmp_path: Path) -> None:
    with db.write() as conn:
        project = add_project(conn)
        servers = add_servers(conn, project, 3)
        host = add_host(conn, "h1", vcpus=8, memory_mib=20000, disk_gib=300)
    settings = _settings(tmp_path)
    assert place(db, _request(servers[0], project), settings).host_id == host
    refused = _no_valid_host(db, _request(servers[1], project), settings)
    assert refused.reports == [FilterReport("capacity", ["h1"], "RAM: 3616 MiB free, 16384 needed")]
    assert place(db, _request(servers[2], project, memory_mib=3616), settings).host_id == host


# -- weighers, subsets, idempotency -----------------------------------------------------------------


def test_spread_and_pack_choose_differently(db: Database, tmp_path: Path) -> None:
    with db.write() as conn:
        project = add_project(conn)
        servers = add_servers(conn, project, 4)
        big = add_host(conn, "big", vcpus=64, memory_mib=65536, disk_gib=1000)
        add_host(conn, "medium", vcpus=64, memory_mib=32768, disk_gib=1000)
        small = add_host(conn, "small", vcpus=64, memory_mib=NEEDED_MIB + 1024, disk_gib=1000)
        add_host(conn, "too-small", vcpus=64, memory_mib=NEEDED_MIB - 1, disk_gib=1000)
    spread = _settings(tmp_path, scheduler_weigher="spread", scheduler_subset_size=1)
    pack = _settings(tmp_path, scheduler_weigher="pack", scheduler_subset_size=1)
    assert place(db, _request(servers[0], project), spread).host_id == big
    assert place(db, _request(servers[1], project), pack).host_id == small
    # spread: big has 49152 MiB free now, more than medium's 32768
    assert place(db, _request(servers[2], project), spread).host_id == big
    # pack: small is full; big and medium have 32768 MiB free each, big has fewer vCPUs free
    assert place(db, _request(servers[3], project), pack).host_id == big


def test_the_subset_spreads_choices_among_the_best_hosts(db: Database, tmp_path: Path) -> None:
    with db.write() as conn:
        project = add_project(conn)
        servers = add_servers(conn, project, 12)
        best = {add_host(conn, f"best{i}", vcpus=64, memory_mib=1_000_000) for i in range(3)}
        add_host(conn, "worse", vcpus=64, memory_mib=100_000)
    settings = _settings(tmp_path, scheduler_subset_size=3)
    random.seed(7)
    small = {"vcpus": 1, "memory_mib": 1024, "disk_gib": 1}
    chosen = {place(db, _request(server, project, **small), settings).host_id for server in servers}
    assert chosen == best  # all three best hosts, never the fourth


def test_a_retried_placement_returns_the_first_one_and_claims_nothing(db: Database, tmp_path: Path) -> None:
    with db.write() as conn:
        project = add_project(conn)
        (server,) = add_servers(conn, project, 1)
        host = add_host(conn, "h1", memory_mib=65536)
    settings = _settings(tmp_path)
    before = REGISTRY.get_sample_value("sovra_scheduler_placements_total", {"outcome": "existing"}) or 0
    first = place(db, _request(server, project), settings)
    with db.write() as conn:  # even when the host would no longer take it
        capacity = _usage(conn, host).capacity
        placement.sync_host(
            conn, host, state="maintenance", arch="x86_64", accelerator="kvm", capacity=capacity
        )
    assert place(db, _request(server, project), settings) == first
    with db.read() as conn:
        usage = _usage(conn, host)
    assert (usage.used_vcpus, usage.servers) == (4, 1)
    assert (
        REGISTRY.get_sample_value("sovra_scheduler_placements_total", {"outcome": "existing"}) == before + 1
    )


def test_claims_lost_every_time_end_in_an_answer_that_says_so(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another scheduler wins every claim (simulated: on SQLite writers never race)."""
    with db.write() as conn:
        project = add_project(conn)
        (server,) = add_servers(conn, project, 1)
        add_host(conn, "busy", memory_mib=65536)
    monkeypatch.setattr(placement, "claim", lambda *args: False)
    before = REGISTRY.get_sample_value("sovra_scheduler_claim_conflicts_total") or 0
    refused = _no_valid_host(db, _request(server, project), _settings(tmp_path, scheduler_max_attempts=4))
    assert refused.reports == [
        FilterReport("claim", ["busy"], "4 claim(s) lost to concurrent schedulers; try again")
    ]
    assert REGISTRY.get_sample_value("sovra_scheduler_claim_conflicts_total") == before + 4


# -- server groups ----------------------------------------------------------------------------------


def test_anti_affinity_puts_each_member_on_another_host(db: Database, tmp_path: Path) -> None:
    with db.write() as conn:
        project = add_project(conn)
        members = add_servers(conn, project, 4)
        group = _group(conn, project, "apart", "anti-affinity")
        hosts = {add_host(conn, f"h{i}", memory_mib=1_000_000, disk_gib=1000) for i in range(3)}
    settings = _settings(tmp_path, scheduler_subset_size=1)
    grouped = {"server_group_id": group, "group_policy": "anti-affinity", "memory_mib": 1024}
    placed = [place(db, _request(member, project, **grouped), settings).host_id for member in members[:3]]
    assert set(placed) == hosts
    refused = _no_valid_host(db, _request(members[3], project, **grouped), settings)
    assert refused.reports == [
        FilterReport("server-group", ["h0", "h1", "h2"], "anti-affinity: a server of the group runs there")
    ]
    with db.write() as conn:
        placement.release(conn, members[0])
    assert place(db, _request(members[3], project, **grouped), settings).host_id == placed[0]


def test_affinity_keeps_members_together_until_their_host_is_full(db: Database, tmp_path: Path) -> None:
    with db.write() as conn:
        project = add_project(conn)
        members = add_servers(conn, project, 3)
        (outsider,) = add_servers(conn, project, 1, prefix="outsider")
        group = _group(conn, project, "together", "affinity")
        add_host(conn, "roomy", memory_mib=1_000_000, disk_gib=1000)
        add_host(conn, "tight", vcpus=8, memory_mib=NEEDED_MIB * 2, disk_gib=1000)
    settings = _settings(tmp_path, scheduler_weigher="pack", scheduler_subset_size=1)
    grouped = {"server_group_id": group, "group_policy": "affinity"}
    first = place(db, _request(members[0], project, **grouped), settings)
    assert first.host_name == "tight"  # pack: the first member goes anywhere, here the fullest host
    assert place(db, _request(members[1], project, **grouped), settings) == first
    refused = _no_valid_host(db, _request(members[2], project, **grouped), settings)
    assert refused.reports == [
        FilterReport("capacity", ["tight"], f"RAM: 0 MiB free, {NEEDED_MIB} needed"),
        FilterReport("server-group", ["roomy"], "affinity: the group's servers run on another host"),
    ]
    assert place(db, _request(outsider, project), settings).host_name == "roomy"  # outside the group: fine


def test_a_group_that_does_not_exist_is_not_found(db: Database, tmp_path: Path) -> None:
    with db.write() as conn:
        project = add_project(conn)
        (server,) = add_servers(conn, project, 1)
        add_host(conn, "h1", memory_mib=65536)
    ghost = "01900000-0000-7000-8000-000000000001"
    with pytest.raises(NotFound, match="ServerGroup"):
        place(
            db, _request(server, project, server_group_id=ghost, group_policy="affinity"), _settings(tmp_path)
        )
    with db.read() as conn:
        assert placement.allocation_of(conn, server) is None


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"vcpus": 0}, "vcpus", "vcpus must be at least 1"),
        ({"memory_mib": -1}, "memory_mib", "memory_mib must be at least 1"),
        ({"disk_gib": -5}, "disk_gib", "disk_gib must be at least 0"),
        ({"group_policy": "affinity"}, "group_policy", "give both or neither"),
        ({"server_group_id": "g", "group_policy": "soft"}, "group_policy", "affinity or anti-affinity"),
    ],
)
def test_a_bad_request_names_its_problem(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words) as refused:
        _request("c", "p", **changes)
    assert refused.value.field == field


# -- the fast path stays cheap ----------------------------------------------------------------------


def _many_hosts(conn: Connection, count: int) -> None:
    """``count`` hosts in two bulk inserts (the store's one-by-one create would dominate the test)."""
    now = utcnow()
    ids = [f"01900000-0000-7000-8000-{i:012d}" for i in range(count)]
    conn.execute(
        sa.insert(resources),
        [
            {
                "id": host_id,
                "kind": "Host",
                "name": f"bulk{i:05d}",
                "project_id": None,
                "public": False,
                "labels": {},
                "spec": {"uri": f"fake://bulk{i}"},
                "status": {"state": "enabled"},
                "generation": 1,
                "version": 1,
                "created_at": now,
                "updated_at": now,
            }
            for i, host_id in enumerate(ids)
        ],
    )
    conn.execute(
        sa.insert(host_capacity),
        [
            {
                "host_id": host_id,
                "generation": 1,
                "state": "maintenance" if i % 10 == 0 else "enabled",
                "arch": "aarch64" if i % 10 == 1 else "x86_64",
                "accelerator": "kvm",
                "capacity_vcpus": 64,
                "capacity_memory_mib": 262144 - i,
                "capacity_disk_gib": 2000,
                "used_vcpus": 0,
                "used_memory_mib": 0,
                "used_disk_gib": 0,
                "servers": 0,
                "updated_at": now,
            }
            for i, host_id in enumerate(ids)
        ],
    )


@pytest.mark.parametrize("weigher", ["spread", "pack"])
def test_the_fast_path_walks_the_index_instead_of_reading_every_host(
    db: Database, tmp_path: Path, weigher: str
) -> None:
    with db.write() as conn:
        _many_hosts(conn, 10_000)
        if db.is_postgresql:
            conn.exec_driver_sql("ANALYZE host_capacity")
            conn.exec_driver_sql("ANALYZE resources")
    settings = _settings(tmp_path, scheduler_weigher=weigher)
    query = fast_path(filters(_request("c", "p", memory_mib=8192)), settings)
    with db.read() as conn:
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        if db.is_postgresql:
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).scalar_one()[0]["Plan"]
            scans = list(_scans_of(plan, "host_capacity"))
            assert [scan["Index Name"] for scan in scans] == ["ix_host_capacity_fit"], plan
            read = sum(scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0) for scan in scans)
            assert read <= settings.scheduler_subset_size + 5, plan  # the subset, not 10,000 hosts
        else:
            steps = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
            assert any("USING INDEX ix_host_capacity_fit" in step for step in steps), steps
            assert not any("TEMP B-TREE" in step for step in steps), steps  # no sort of every host


def _scans_of(plan: dict[str, Any], table: str) -> Any:
    if plan.get("Relation Name") == table:
        yield plan
    for child in plan.get("Plans", []):
        yield from _scans_of(child, table)


# -- hosts registered through the API stay in step with the scheduler -------------------------------


def _register_host(client: httpx.Client, name: str, uri: str) -> dict[str, Any]:
    from tests.test_hosts import _register  # imported here: see the TYPE_CHECKING block above

    return _register(client, name, uri)


def test_operator_changes_and_the_health_check_reach_the_scheduler(api: LiveServer) -> None:
    settings = api.settings
    with api.client() as client:
        host = _register_host(client, "fakesched", "fake://fakesched?cpus=4&memory_mib=32768&disk_gib=500")
        project = client.post("/v1/projects", json={"name": "p"}).json()["id"]
        assert host["usage"] == {"vcpus": 0, "memory_mib": 0, "disk_gib": 0, "servers": 0}
    with api.db.write() as conn:
        servers = add_servers(conn, project, 2)
    placed = place(api.db, _request(servers[0], project), settings)
    assert (placed.host_name, placed.uri) == (
        "fakesched",
        "fake://fakesched?cpus=4&memory_mib=32768&disk_gib=500",
    )
    url = f"/v1/hosts/{host['id']}"
    with api.client() as client:
        assert client.get(url).json()["usage"] == {
            "vcpus": 4,
            "memory_mib": 16384,
            "disk_gib": 100,
            "servers": 1,
        }
        patched = client.patch(url, json={"spec": {**host["spec"], "admin_state": "maintenance"}})
        assert patched.status_code == 200 and patched.json()["usage"]["servers"] == 1
    refused = _no_valid_host(api.db, _request(servers[1], project), settings)
    assert refused.reports == [FilterReport("state", ["fakesched"], "maintenance")]
    with api.client() as client:
        client.patch(url, json={"spec": {**host["spec"], "allocation_ratios": {"cpu": 1.0}}})
    refused = _no_valid_host(api.db, _request(servers[1], project), settings)  # 4 vCPUs, all claimed
    assert refused.reports == [FilterReport("capacity", ["fakesched"], "vCPUs: 0 free, 4 needed")]
    fake.set_reachable("fakesched", False)
    try:
        health_check(api.db, settings)
        refused = _no_valid_host(api.db, _request(servers[1], project, vcpus=1), settings)
        assert refused.reports == [FilterReport("state", ["fakesched"], "down")]
    finally:
        fake.set_reachable("fakesched", True)
    health_check(api.db, settings)  # it answers again: enabled, and full
    refused = _no_valid_host(api.db, _request(servers[1], project, vcpus=1), settings)
    assert refused.reports == [FilterReport("capacity", ["fakesched"], "vCPUs: 0 free, 1 needed")]


def test_a_host_holding_allocations_cannot_be_forgotten(api: LiveServer) -> None:
    with api.client() as client:
        host = _register_host(client, "holder", "fake://holder?cpus=8&memory_mib=65536")
        project = client.post("/v1/projects", json={"name": "p"}).json()["id"]
    with api.db.write() as conn:
        servers = add_servers(conn, project, 2)
    for server in servers:
        place(api.db, _request(server, project, memory_mib=1024), api.settings)
    url = f"/v1/hosts/{host['id']}"
    with api.client() as client:
        refused = client.delete(url)
        assert refused.status_code == 409, refused.text
        assert "host holder still holds 2 allocation(s)" in refused.json()["detail"]
        assert refused.json()["allocations"] == 2
        listed = {h["id"]: h for h in client.get("/v1/hosts").json()["items"]}
        assert listed[host["id"]]["usage"]["servers"] == 2
    with api.db.write() as conn:
        for server in servers:
            placement.release(conn, server)
    with api.client() as client:
        assert client.delete(url).status_code == 204
        assert client.get(url).status_code == 404
    with api.db.read() as conn:
        assert placement.usage(conn, host["id"]) is None


# -- parallel schedulers on PostgreSQL --------------------------------------------------------------


def _placer(
    url: str, consumers: list[str], request: dict[str, Any], settings: dict[str, Any], seed: int, start: Any
) -> dict[str, str]:
    """One scheduler process: place consumers (in its own order) until no host is left."""
    rng = random.Random(seed)
    order = consumers[:]
    rng.shuffle(order)
    db = Database(url, pool_size=2)
    placed: dict[str, str] = {}
    start.wait()
    try:
        for consumer in order:
            placed[consumer] = place(
                db, PlacementRequest(consumer_id=consumer, **request), Settings(**settings)
            ).host_id
    except NoValidHost:
        pass
    finally:
        db.dispose()
    return placed


def _run_placers(
    url: str, consumers: list[str], request: dict[str, Any], settings: dict[str, Any], processes: int
) -> dict[str, str]:
    """Run the placers in parallel; check they agree with the allocations, which they return."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(processes) as pool:
        start = manager.Barrier(processes)  # every process starts placing at the same moment
        jobs = [
            pool.apply_async(_placer, (url, consumers, request, settings, seed, start))
            for seed in range(processes)
        ]
        results = [job.get(timeout=240) for job in jobs]
    db = Database(url)
    with db.read() as conn:
        assert_consistent(conn)
        rows = conn.execute(sa.select(allocations.c.consumer_id, allocations.c.host_id))
        held = {row.consumer_id: row.host_id for row in rows}
    db.dispose()
    for placed in results:  # whatever a process was told is where the consumer's one allocation is
        assert all(held[consumer] == host for consumer, host in placed.items())
    assert set(held) == set().union(*results)
    return held


@pytest.fixture
def fresh_postgres(tmp_path: Path) -> Any:
    with temporary_postgres_database() as url:
        migrated(url).dispose()
        yield url


@pytest.mark.slow
@pytest.mark.parametrize(("weigher", "subset"), [("pack", 1), ("spread", 3)])
def test_parallel_schedulers_never_overcommit(
    fresh_postgres: str, tmp_path: Path, weigher: str, subset: int
) -> None:
    db = Database(fresh_postgres)
    with db.write() as conn:
        project = add_project(conn)
        consumers = add_servers(conn, project, 150)
        for i, (vcpus, memory_mib) in enumerate(((24, 24576), (18, 49152), (48, 18432))):
            add_host(conn, f"small{i}", vcpus=vcpus, memory_mib=memory_mib, disk_gib=180)
    request: dict[str, Any] = {"project_id": project, "vcpus": 1, "memory_mib": 1024, "disk_gib": 5}
    settings: dict[str, Any] = {
        "data_dir": str(tmp_path),
        "scheduler_weigher": weigher,
        "scheduler_subset_size": subset,
        "scheduler_max_attempts": 50,
    }
    held = _run_placers(fresh_postgres, consumers, request, settings, processes=4)
    assert len(held) == 60  # 24 + 18 + 18: vCPUs and RAM bind on small0, vCPUs on small1, RAM on small2
    with db.write() as conn:
        (spare,) = add_servers(conn, project, 1, prefix="spare")
    refused = _no_valid_host(db, PlacementRequest(consumer_id=spare, **request), Settings(**settings))
    assert {report.filter for report in refused.reports} == {"capacity"}
    db.dispose()


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "members", "hosts"), [("anti-affinity", 5, 5), ("affinity", 8, 1)])
def test_parallel_schedulers_keep_a_server_group_policy(
    fresh_postgres: str, tmp_path: Path, policy: str, members: int, hosts: int
) -> None:
    """Five hosts with room for eight members each: apart, five members fit; together, eight."""
    db = Database(fresh_postgres)
    with db.write() as conn:
        project = add_project(conn)
        candidates = add_servers(conn, project, 40)
        group = _group(conn, project, "group", policy)
        for i in range(5):
            add_host(conn, f"roomy{i}", vcpus=8, memory_mib=262144, disk_gib=2000)
    request: dict[str, Any] = {
        "project_id": project,
        "vcpus": 1,
        "memory_mib": 512,
        "disk_gib": 1,
        "server_group_id": group,
        "group_policy": policy,
    }
    settings: dict[str, Any] = {"data_dir": str(tmp_path), "scheduler_max_attempts": 50}
    held = _run_placers(fresh_postgres, candidates, request, settings, processes=4)
    assert (len(held), len(set(held.values()))) == (members, hosts)
    db.dispose()
