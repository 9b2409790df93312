"""Host capacity and allocations on both backends: generations, claims, releases, resizes, and the
refusals that keep the used columns equal to the sum of the allocations."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from sovra.domain.errors import Conflict, InvalidArgument, NotFound
from sovra.domain.host import Capacity
from sovra.store import placement, resources
from sovra.store.database import Database
from sovra.store.schema import allocations, host_capacity, metadata

# -- helpers shared with test_scheduler -----------------------------------------------------------


def add_host(
    conn: Connection,
    name: str,
    *,
    vcpus: int = 8,
    memory_mib: int = 16384,
    disk_gib: int = 100,
    state: str = "enabled",
    arch: str = "x86_64",
    accelerator: str = "kvm",
) -> str:
    """A host as host.refresh leaves it: a Host resource with a fake:// URI, and its capacity."""
    host = resources.create(
        conn, kind="Host", name=name, project_id=None, labels={}, spec={"uri": f"fake://{name}"}, state=state
    )
    placement.sync_host(
        conn,
        host.id,
        state=state,
        arch=arch,
        accelerator=accelerator,
        capacity=Capacity(vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib),
    )
    return host.id


def add_project(conn: Connection, name: str = "tenant") -> str:
    return resources.create(
        conn, kind="Project", name=name, project_id=None, labels={}, spec={}, state="ACTIVE"
    ).id


def add_servers(conn: Connection, project_id: str, count: int, prefix: str = "server") -> list[str]:
    return [
        resources.create(
            conn,
            kind="Server",
            name=f"{prefix}-{i}",
            project_id=project_id,
            labels={},
            spec={},
            state="BUILDING",
        ).id
        for i in range(count)
    ]


def assert_consistent(conn: Connection) -> None:
    """Every host's used columns are the sum of its allocations and never exceed its capacity."""
    held = {
        row.host_id: row
        for row in conn.execute(
            sa.select(
                allocations.c.host_id,
                sa.func.sum(allocations.c.vcpus).label("vcpus"),
                sa.func.sum(allocations.c.memory_mib).label("memory_mib"),
                sa.func.sum(allocations.c.disk_gib).label("disk_gib"),
                sa.func.count().label("servers"),
            ).group_by(allocations.c.host_id)
        )
    }
    for host in conn.execute(sa.select(host_capacity)).mappings():
        row = held.get(host["host_id"])
        expected = (row.vcpus, row.memory_mib, row.disk_gib, row.servers) if row else (0, 0, 0, 0)
        used = (host["used_vcpus"], host["used_memory_mib"], host["used_disk_gib"], host["servers"])
        assert used == expected, host
        assert host["free_vcpus"] >= 0 and host["free_memory_mib"] >= 0 and host["free_disk_gib"] >= 0, host


def _usage(db: Database, host_id: str) -> placement.HostUsage:
    with db.read() as conn:
        found = placement.usage(conn, host_id)
    assert found is not None
    return found


def _used(db: Database, host_id: str) -> tuple[int, int, int, int]:
    found = _usage(db, host_id)
    return found.used_vcpus, found.used_memory_mib, found.used_disk_gib, found.servers


@pytest.fixture
def world(db: Database) -> tuple[str, str, list[str]]:
    """Two hosts (8 vCPUs, 16 GiB, 100 GiB each), a project and three servers."""
    with db.write() as conn:
        project = add_project(conn)
        return add_host(conn, "h1"), add_host(conn, "h2"), [project, *add_servers(conn, project, 3)]


# -- schema -----------------------------------------------------------------------------------------


def test_the_migrations_create_exactly_the_declared_schema(db: Database) -> None:
    with db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []


# -- hosts ------------------------------------------------------------------------------------------


def test_sync_host_bumps_the_generation_only_when_something_changed(db: Database) -> None:
    with db.write() as conn:
        host = add_host(conn, "h1")
    small, large = (
        Capacity(vcpus=8, memory_mib=16384, disk_gib=100),
        Capacity(vcpus=16, memory_mib=16384, disk_gib=100),
    )

    def sync(state: str = "enabled", capacity: Capacity = small, arch: str = "x86_64") -> int:
        with db.write() as conn:
            placement.sync_host(conn, host, state=state, arch=arch, accelerator="kvm", capacity=capacity)
        return _usage(db, host).generation

    assert sync() == 1  # the health check's every-30-s call changes nothing
    assert sync("maintenance") == 2
    assert sync("maintenance") == 2
    assert sync("maintenance", large) == 3
    assert sync("maintenance", large, "aarch64") == 4
    found = _usage(db, host)
    assert (found.state, found.arch, found.capacity.vcpus, found.servers) == ("maintenance", "aarch64", 16, 0)


def test_remove_host_is_refused_while_allocations_use_it(
    db: Database, world: tuple[str, str, list[str]]
) -> None:
    h1, _, (project, server, *_) = world
    with db.write() as conn:
        assert placement.claim(conn, h1, 1, server, project, 2, 1024, 10)
    with pytest.raises(Conflict, match="host h1 still holds 1 allocation") as refused, db.write() as conn:
        placement.remove_host(conn, h1)
    assert refused.value.extensions["allocations"] == 1
    assert _used(db, h1) == (2, 1024, 10, 1)
    with db.write() as conn:
        placement.release(conn, server)
        placement.remove_host(conn, h1)
        assert placement.usage(conn, h1) is None


def test_deleting_a_host_resource_drops_its_capacity(db: Database, world: tuple[str, str, list[str]]) -> None:
    h1, h2, _ = world
    with db.write() as conn:
        resources.delete(conn, [h1])
        assert set(placement.usages(conn, [h1, h2])) == {h2}


# -- claims -----------------------------------------------------------------------------------------


def test_a_claim_adds_exactly_its_amounts_and_a_release_gives_them_back(
    db: Database, world: tuple[str, str, list[str]]
) -> None:
    h1, _, (project, server, *_) = world
    with db.write() as conn:
        assert placement.claim(conn, h1, 1, server, project, 2, 4096, 20, None)
        held = placement.allocation_of(conn, server)
    assert held is not None and (held.host_id, held.vcpus, held.memory_mib, held.disk_gib) == (
        h1,
        2,
        4096,
        20,
    )
    assert _used(db, h1) == (2, 4096, 20, 1) and _usage(db, h1).generation == 2
    with db.write() as conn:
        released = placement.release(conn, server)
    assert released == held
    assert _used(db, h1) == (0, 0, 0, 0) and _usage(db, h1).generation == 3
    with db.write() as conn:
        assert placement.release(conn, server) is None  # a retried release changes nothing
        assert placement.allocation_of(conn, server) is None
    assert _usage(db, h1).generation == 3
    with db.read() as conn:
        assert_consistent(conn)


def test_a_stale_generation_loses_and_writes_nothing(db: Database, world: tuple[str, str, list[str]]) -> None:
    h1, _, (project, first, second, _) = world
    with db.write() as conn:
        assert placement.claim(conn, h1, 1, first, project, 1, 1024, 10)
    with db.write() as conn:  # a scheduler that read generation 1 before the first claim
        assert not placement.claim(conn, h1, 1, second, project, 1, 1024, 10)
        assert placement.allocation_of(conn, second) is None
    assert _used(db, h1) == (1, 1024, 10, 1) and _usage(db, h1).generation == 2


def test_a_claim_that_no_longer_fits_is_refused(db: Database, world: tuple[str, str, list[str]]) -> None:
    h1, _, (project, first, second, _) = world
    with db.write() as conn:
        assert placement.claim(conn, h1, 1, first, project, 6, 1024, 10)
        for vcpus, memory_mib, disk_gib in ((3, 1024, 10), (1, 15361, 10), (1, 1024, 91)):
            assert not placement.claim(conn, h1, 2, second, project, vcpus, memory_mib, disk_gib)
        assert placement.claim(conn, h1, 2, second, project, 2, 15360, 90)  # exactly what is left
    assert _used(db, h1) == (8, 16384, 100, 2)


@pytest.mark.parametrize(
    ("amounts", "field"),
    [
        ((0, 1024, 10), "vcpus"),
        ((1, 0, 10), "memory_mib"),
        ((1, 1024, -1), "disk_gib"),
        ((-2, 1024, 1), "vcpus"),
    ],
)
def test_bad_amounts_name_the_field_and_write_nothing(
    db: Database, world: tuple[str, str, list[str]], amounts: tuple[int, int, int], field: str
) -> None:
    h1, _, (project, server, other, _) = world
    with pytest.raises(InvalidArgument, match=field) as refused, db.write() as conn:
        placement.claim(conn, h1, 1, server, project, *amounts)
    assert refused.value.field == field
    with db.write() as conn:
        assert placement.claim(conn, h1, 1, other, project, 1, 1024, 10)
    with pytest.raises(InvalidArgument, match=field), db.write() as conn:
        placement.resize_claim(conn, other, *amounts)
    with db.read() as conn:
        assert placement.allocation_of(conn, server) is None
        assert_consistent(conn)
    assert _used(db, h1) == (1, 1024, 10, 1)


def test_a_consumer_holds_one_allocation(db: Database, world: tuple[str, str, list[str]]) -> None:
    h1, h2, (project, server, *_) = world
    with db.write() as conn:
        assert placement.claim(conn, h1, 1, server, project, 1, 1024, 10)
    already = "already holds an allocation on host h1"
    with pytest.raises(placement.AlreadyAllocated, match=already), db.write() as conn:
        placement.claim(conn, h2, 1, server, project, 1, 1024, 10)
    assert _used(db, h2) == (0, 0, 0, 0) and _usage(db, h2).generation == 1


def test_a_claim_for_something_that_is_not_a_resource_is_refused(
    db: Database, world: tuple[str, str, list[str]]
) -> None:
    h1, _, (project, *_) = world
    ghost = "01900000-0000-7000-8000-000000000000"
    with pytest.raises(NotFound, match=f"consumer {ghost} not found"), db.write() as conn:
        placement.claim(conn, h1, 1, ghost, project, 1, 1024, 10)
    assert _used(db, h1) == (0, 0, 0, 0)


def test_a_claim_on_a_host_the_scheduler_does_not_know_loses(
    db: Database, world: tuple[str, str, list[str]]
) -> None:
    _, _, (project, server, *_) = world
    with db.write() as conn:
        unknown = resources.create(
            conn,
            kind="Host",
            name="new",
            project_id=None,
            labels={},
            spec={"uri": "fake://new"},
            state="registering",
        ).id
        assert not placement.claim(conn, unknown, 1, server, project, 1, 1024, 10)
        assert placement.allocation_of(conn, server) is None


def test_a_server_that_holds_resources_cannot_be_deleted_before_its_release(
    db: Database, world: tuple[str, str, list[str]]
) -> None:
    """No cascade: dropping the allocation with the server's row would never give the capacity back."""
    h1, _, (project, server, *_) = world
    with db.write() as conn:
        assert placement.claim(conn, h1, 1, server, project, 2, 2048, 10)
    with pytest.raises(IntegrityError), db.write() as conn:
        resources.delete(conn, [server])
    assert _used(db, h1) == (2, 2048, 10, 1)
    with db.write() as conn:
        placement.release(conn, server)
        resources.delete(conn, [server])
    assert _used(db, h1) == (0, 0, 0, 0)


# -- resize -----------------------------------------------------------------------------------------


def test_resize_claim_grows_shrinks_and_refuses_what_does_not_fit(
    db: Database, world: tuple[str, str, list[str]]
) -> None:
    h1, _, (project, server, other, _) = world
    with db.write() as conn:
        assert placement.claim(conn, h1, 1, server, project, 2, 4096, 20)
        assert placement.claim(conn, h1, 2, other, project, 2, 4096, 20)
    with db.write() as conn:
        assert placement.resize_claim(conn, server, 4, 8192, 40)
    assert _used(db, h1) == (6, 12288, 60, 2)
    generation = _usage(db, h1).generation
    for too_big in ((7, 8192, 40), (4, 12289, 40), (4, 8192, 81)):
        with db.write() as conn:
            assert not placement.resize_claim(conn, server, *too_big)
    with db.write() as conn:
        assert placement.resize_claim(conn, server, 4, 8192, 40)  # a retried step: nothing to do
    assert _used(db, h1) == (6, 12288, 60, 2) and _usage(db, h1).generation == generation
    with db.write() as conn:
        assert placement.resize_claim(conn, server, 1, 1024, 20)
        held = placement.allocation_of(conn, server)
        assert_consistent(conn)
    assert held is not None and (held.vcpus, held.memory_mib, held.disk_gib) == (1, 1024, 20)
    assert _used(db, h1) == (3, 5120, 40, 2)


def test_shrinking_fits_even_when_the_host_shrank_below_its_use(
    db: Database, world: tuple[str, str, list[str]]
) -> None:
    h1, _, (project, server, *_) = world
    with db.write() as conn:
        assert placement.claim(conn, h1, 1, server, project, 8, 16384, 100)
        placement.sync_host(  # the operator lowered the allocation ratios
            conn,
            h1,
            state="enabled",
            arch="x86_64",
            accelerator="kvm",
            capacity=Capacity(vcpus=4, memory_mib=8192, disk_gib=50),
        )
        assert not placement.resize_claim(conn, server, 8, 16384, 101)
        assert placement.resize_claim(conn, server, 6, 16384, 100)
    assert _used(db, h1) == (6, 16384, 100, 1)


def test_resizing_what_was_never_claimed_is_not_found(
    db: Database, world: tuple[str, str, list[str]]
) -> None:
    server = world[2][1]
    with pytest.raises(NotFound, match="holds no allocation to resize"), db.write() as conn:
        placement.resize_claim(conn, server, 1, 1024, 10)


# -- the invariant after a mixed sequence -----------------------------------------------------------


def test_used_columns_follow_any_sequence_of_claims_releases_and_resizes(
    db: Database, world: tuple[str, str, list[str]]
) -> None:
    h1, h2, (project, *_) = world
    with db.write() as conn:
        servers = add_servers(conn, project, 12, prefix="mixed")
    steps: list[Callable[[Connection, str], object]] = [
        lambda conn, s: placement.claim(conn, h1, _usage(db, h1).generation, s, project, 1, 1024, 5),
        lambda conn, s: placement.claim(conn, h2, _usage(db, h2).generation, s, project, 2, 2048, 10),
        lambda conn, s: (
            placement.resize_claim(conn, s, 3, 3072, 15) if placement.allocation_of(conn, s) else None
        ),
        lambda conn, s: placement.release(conn, s),
    ]
    for index, server in enumerate(servers * 3):
        with db.write() as conn:
            try:
                steps[(index * 7) % len(steps)](conn, server)
            except placement.AlreadyAllocated:
                continue
    with db.read() as conn:
        assert_consistent(conn)
