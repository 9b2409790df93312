"""Host capacity and allocations: what the scheduler reads, and the claims it writes.

Each host has one ``host_capacity`` row: its state, architecture, accelerator, capacity (after
allocation ratios) and what allocations use of it. Every write to that row bumps its
``generation``. A claim is one conditional ``UPDATE`` that adds the request to the used columns
only if the host is still at the generation the scheduler read *and* the request still fits, plus
the allocation's row, in the caller's transaction. A scheduler that decided on numbers that are no
longer true loses the claim (``claim`` returns False) instead of overcommitting the host.

Allocations name their consumer (a server) with a foreign key to its resource row, without a
cascade. A cascade would drop the allocation when the server's row is deleted without giving its
vCPUs, RAM and disk back to the host: the host would look fuller than it is, for ever. Without a
cascade, deleting a server that still holds resources fails; the server's deletion calls
:func:`release` in the same transaction that deletes its row. For the same reason a host's row
cannot be deleted while allocations point at it (:func:`remove_host` refuses first).

Locks are taken in one order, the allocation's row before the host's, so that claims, releases
and resizes never deadlock each other on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from sovra.domain.errors import Conflict, InvalidArgument, NotFound
from sovra.domain.host import Capacity
from sovra.store.schema import allocations, host_capacity, resources
from sovra.store.types import utcnow

_HOST = host_capacity.c
_ALLOCATION = allocations.c
_FACTS = ("state", "arch", "accelerator", "capacity_vcpus", "capacity_memory_mib", "capacity_disk_gib")


class AlreadyAllocated(Conflict):
    """The consumer holds an allocation already (a second claim for it was refused)."""


@dataclass(frozen=True)
class Allocation:
    consumer_id: str
    host_id: str
    project_id: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    server_group_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class HostUsage:
    """One host as the scheduler sees it: capacity after ratios, and what allocations use of it."""

    host_id: str
    generation: int
    state: str
    arch: str
    accelerator: str
    capacity: Capacity
    used_vcpus: int
    used_memory_mib: int
    used_disk_gib: int
    servers: int


def _allocation(row: RowMapping) -> Allocation:
    return Allocation(**{column.name: row[column.name] for column in allocations.columns})


def _host_usage(row: RowMapping) -> HostUsage:
    return HostUsage(
        host_id=row["host_id"],
        generation=row["generation"],
        state=row["state"],
        arch=row["arch"],
        accelerator=row["accelerator"],
        capacity=Capacity(
            vcpus=row["capacity_vcpus"],
            memory_mib=row["capacity_memory_mib"],
            disk_gib=row["capacity_disk_gib"],
        ),
        used_vcpus=row["used_vcpus"],
        used_memory_mib=row["used_memory_mib"],
        used_disk_gib=row["used_disk_gib"],
        servers=row["servers"],
    )


def _require_amounts(vcpus: int, memory_mib: int, disk_gib: int) -> None:
    """A claim adds these to a host's used columns: a negative one would free what it never held."""
    for field, value, least in (
        ("vcpus", vcpus, 1),
        ("memory_mib", memory_mib, 1),
        ("disk_gib", disk_gib, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidArgument(
                f"{field} must be a whole number of at least {least}, not {value!r}", field=field
            )


# -- hosts ------------------------------------------------------------------------------------------


def sync_host(
    conn: Connection, host_id: str, *, state: str, arch: str, accelerator: str, capacity: Capacity
) -> None:
    """Record a host's state, architecture, accelerator and capacity (one upsert).

    The generation is bumped only when one of them changed, so the health check, which calls this
    every 30 s for every host, neither writes nor makes a scheduler's claim fail for nothing.
    """
    facts: dict[str, Any] = {
        "state": state,
        "arch": arch,
        "accelerator": accelerator,
        "capacity_vcpus": capacity.vcpus,
        "capacity_memory_mib": capacity.memory_mib,
        "capacity_disk_gib": capacity.disk_gib,
    }
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(host_capacity)
    now = utcnow()
    statement = insert.values(
        host_id=host_id,
        generation=1,
        used_vcpus=0,
        used_memory_mib=0,
        used_disk_gib=0,
        servers=0,
        updated_at=now,
        **facts,
    ).on_conflict_do_update(
        index_elements=[_HOST.host_id],
        set_={
            **{name: insert.excluded[name] for name in _FACTS},
            "generation": _HOST.generation + 1,
            "updated_at": now,
        },
        where=sa.or_(*(_HOST[name] != insert.excluded[name] for name in _FACTS)),
    )
    conn.execute(statement)


def remove_host(conn: Connection, host_id: str) -> None:
    """Forget a host's capacity; refused (``Conflict``, naming the count) while allocations use it.

    The host's row is locked first, so a claim racing with this either lands before the count (and
    is counted) or finds the host gone (and loses).
    """
    conn.execute(sa.select(_HOST.host_id).where(_HOST.host_id == host_id).with_for_update())
    held = conn.execute(
        sa.select(sa.func.count()).select_from(allocations).where(_ALLOCATION.host_id == host_id)
    ).scalar_one()
    if held:
        raise Conflict(
            f"host {_host_name(conn, host_id)} still holds {held} allocation(s); "
            "delete or move its servers first",
            allocations=held,
        )
    conn.execute(sa.delete(host_capacity).where(_HOST.host_id == host_id))


def _host_name(conn: Connection, host_id: str) -> str:
    name = conn.execute(sa.select(resources.c.name).where(resources.c.id == host_id)).scalar()
    return name or host_id


def usages(conn: Connection, host_ids: Sequence[str]) -> dict[str, HostUsage]:
    """The scheduler's view of each of ``host_ids`` it knows (hosts never inventoried are absent)."""
    if not host_ids:
        return {}
    rows = conn.execute(sa.select(host_capacity).where(_HOST.host_id.in_(host_ids))).mappings()
    return {row["host_id"]: _host_usage(row) for row in rows}


def usage(conn: Connection, host_id: str) -> HostUsage | None:
    return usages(conn, [host_id]).get(host_id)


# -- claims -----------------------------------------------------------------------------------------


def _change_usage(
    conn: Connection,
    host_id: str,
    *,
    vcpus: int,
    memory_mib: int,
    disk_gib: int,
    servers: int,
    generation: int | None,
) -> bool:
    """Add the deltas to the host's used columns (negative ones free) and bump its generation.

    Given ``generation``, only while the host is still at it. A positive delta must fit in what is
    free; a negative one always applies, even on a host whose capacity shrank below its use.
    """
    statement = (
        sa.update(host_capacity)
        .where(_HOST.host_id == host_id)
        .values(
            used_vcpus=_HOST.used_vcpus + vcpus,
            used_memory_mib=_HOST.used_memory_mib + memory_mib,
            used_disk_gib=_HOST.used_disk_gib + disk_gib,
            servers=_HOST.servers + servers,
            generation=_HOST.generation + 1,
            updated_at=utcnow(),
        )
    )
    if generation is not None:
        statement = statement.where(_HOST.generation == generation)
    for free, delta in (
        (_HOST.free_vcpus, vcpus),
        (_HOST.free_memory_mib, memory_mib),
        (_HOST.free_disk_gib, disk_gib),
    ):
        if delta > 0:
            statement = statement.where(free >= delta)
    return conn.execute(statement).rowcount == 1


def claim(
    conn: Connection,
    host_id: str,
    generation: int,
    consumer_id: str,
    project_id: str,
    vcpus: int,
    memory_mib: int,
    disk_gib: int,
    server_group_id: str | None = None,
) -> bool:
    """Claim the resources for ``consumer_id`` on the host, if it is still at ``generation`` and
    they still fit; False when it is not (another scheduler won: select again).

    Raises ``AlreadyAllocated`` when the consumer holds an allocation already and ``NotFound`` when
    it is not a resource. Nothing is written unless it returns True.
    """
    _require_amounts(vcpus, memory_mib, disk_gib)
    try:
        with conn.begin_nested() as savepoint:
            conn.execute(
                sa.insert(allocations).values(
                    consumer_id=consumer_id,
                    host_id=host_id,
                    project_id=project_id,
                    vcpus=vcpus,
                    memory_mib=memory_mib,
                    disk_gib=disk_gib,
                    server_group_id=server_group_id,
                    created_at=utcnow(),
                )
            )
            if _change_usage(
                conn,
                host_id,
                vcpus=vcpus,
                memory_mib=memory_mib,
                disk_gib=disk_gib,
                servers=1,
                generation=generation,
            ):
                return True
            savepoint.rollback()
            return False
    except IntegrityError as exc:
        return _refused(conn, consumer_id, host_id, exc)


def _refused(conn: Connection, consumer_id: str, host_id: str, error: IntegrityError) -> bool:
    """Say why the allocation's row was refused; a host deleted meanwhile is a lost claim."""
    held = allocation_of(conn, consumer_id)
    if held is not None:
        name = _host_name(conn, held.host_id)
        raise AlreadyAllocated(
            f"{consumer_id} already holds an allocation on host {name}; release it first",
            host_id=held.host_id,
            host_name=name,
        ) from error
    if conn.execute(sa.select(resources.c.id).where(resources.c.id == consumer_id)).first() is None:
        raise NotFound(
            f"consumer {consumer_id} not found: allocations belong to an existing server"
        ) from error
    if usage(conn, host_id) is None:
        return False
    raise error


def release(conn: Connection, consumer_id: str) -> Allocation | None:
    """Give back exactly what the consumer's allocation held and delete it; None if it held none.

    Idempotent: a second release (a retried step) finds nothing and changes nothing.
    """
    row = (
        conn.execute(
            sa.delete(allocations).where(_ALLOCATION.consumer_id == consumer_id).returning(*allocations.c)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    held = _allocation(row)
    _change_usage(
        conn,
        held.host_id,
        vcpus=-held.vcpus,
        memory_mib=-held.memory_mib,
        disk_gib=-held.disk_gib,
        servers=-1,
        generation=None,
    )
    return held


def resize_claim(conn: Connection, consumer_id: str, vcpus: int, memory_mib: int, disk_gib: int) -> bool:
    """Change the consumer's allocation to the new amounts on the same host; False (and nothing
    changed) when the growth does not fit in what the host has free. Shrinking always fits.

    Claiming the amounts it already holds changes nothing, so a retried step is harmless.
    """
    _require_amounts(vcpus, memory_mib, disk_gib)
    row = (
        conn.execute(sa.select(allocations).where(_ALLOCATION.consumer_id == consumer_id).with_for_update())
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"{consumer_id} holds no allocation to resize; it was never placed or was released")
    held = _allocation(row)
    wanted = {"vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": disk_gib}
    if all(getattr(held, name) == value for name, value in wanted.items()):
        return True
    generation = conn.execute(
        sa.select(_HOST.generation).where(_HOST.host_id == held.host_id).with_for_update()
    ).scalar_one()
    if not _change_usage(
        conn,
        held.host_id,
        vcpus=vcpus - held.vcpus,
        memory_mib=memory_mib - held.memory_mib,
        disk_gib=disk_gib - held.disk_gib,
        servers=0,
        generation=generation,
    ):
        return False
    conn.execute(sa.update(allocations).where(_ALLOCATION.consumer_id == consumer_id).values(**wanted))
    return True


def allocation_of(conn: Connection, consumer_id: str) -> Allocation | None:
    row = (
        conn.execute(sa.select(allocations).where(_ALLOCATION.consumer_id == consumer_id)).mappings().first()
    )
    return _allocation(row) if row is not None else None
