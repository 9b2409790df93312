"""The scheduler: which host a server goes to, and the claim of its resources there.

Every filter is defined once, as an SQL predicate over ``host_capacity``, and used twice:

- **the fast path** ANDs all filters into one query, ordered by the weigher and limited to
  ``scheduler_subset_size`` rows. The ``ix_host_capacity_fit`` index (state, arch, free RAM, free
  vCPUs) answers it by walking the best hosts first, so placing on 10,000 hosts reads a handful of
  rows, not 10,000. One of those rows is picked at random (fewer collisions between schedulers
  running in parallel, like Nova's ``host_subset_size``) and claimed in the same transaction,
  guarded by the generation it was read at;
- **the explain path** runs only when the fast path finds nothing: it applies the filters one after
  another, also in SQL, and reports which filter removed which hosts and why.

A claim lost to another scheduler (the host's generation moved) starts a new transaction that
selects again, up to ``scheduler_max_attempts`` times. With a server group, the group's resource
row is locked first, so two members placed at the same moment see each other's allocation and
cannot both break the policy. The reasons are in docs/adr/0012-scheduler-filters-as-sql.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from sovra.config import Settings
from sovra.domain.errors import Conflict, InvalidArgument
from sovra.domain.host import HostState
from sovra.domain.server_group import SERVER_GROUP_KIND, Policy
from sovra.metrics import CLAIM_CONFLICTS, PLACEMENT_DURATION, PLACEMENTS
from sovra.store import placement as placement_store
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.store.schema import allocations, host_capacity, resources

MAX_NAMES = 20
"""Host names listed per report; the rest are counted ("and N more")."""

_HOST = host_capacity.c
_WEIGHERS: dict[str, tuple[sa.UnaryExpression[int], ...]] = {
    "spread": (_HOST.free_memory_mib.desc(), _HOST.free_vcpus.desc()),
    "pack": (_HOST.free_memory_mib.asc(), _HOST.free_vcpus.asc()),
}


@dataclass(frozen=True)
class PlacementRequest:
    """What one server needs from a host."""

    consumer_id: str  # the server id
    project_id: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    arch: str = "x86_64"  # from the image (architecture metadata)
    require_kvm: bool = False  # the image needs hardware virtualisation
    server_group_id: str | None = None
    group_policy: str | None = None  # "affinity" | "anti-affinity"
    excluded_hosts: frozenset[str] = frozenset()  # host ids, e.g. hosts that already failed this server

    def __post_init__(self) -> None:
        for field, least in (("vcpus", 1), ("memory_mib", 1), ("disk_gib", 0)):
            if getattr(self, field) < least:
                raise InvalidArgument(
                    f"{field} must be at least {least}, not {getattr(self, field)}", field=field
                )
        if (self.server_group_id is None) != (self.group_policy is None):
            raise InvalidArgument(
                "server_group_id and group_policy go together: give both or neither", field="group_policy"
            )
        if self.group_policy is not None and self.group_policy not in tuple(Policy):
            raise InvalidArgument(
                f"group_policy must be affinity or anti-affinity, not {self.group_policy!r}",
                field="group_policy",
            )


@dataclass(frozen=True)
class Placement:
    host_id: str
    host_name: str
    uri: str
    accelerator: str


@dataclass(frozen=True)
class FilterReport:
    """The hosts one filter removed (at most ``MAX_NAMES`` names, ``more`` counts the others)."""

    filter: str
    removed: list[str]
    reason: str
    more: int = 0

    def __str__(self) -> str:
        names = ", ".join(self.removed) + (f" and {self.more} more" if self.more else "")
        return f"{self.filter} removed {names} ({self.reason})"


class NoValidHost(Conflict):
    """No host passes every filter; ``reports`` says which filter removed which hosts, and why."""

    title = "No valid host"

    def __init__(self, request: PlacementRequest, reports: list[FilterReport]) -> None:
        needs = f"{request.vcpus} vCPUs, {request.memory_mib} MiB, {request.disk_gib} GiB"
        why = "; ".join(str(report) for report in reports) or "no host has reported its inventory yet"
        self.reports = reports
        super().__init__(f"no valid host for {needs}: {why}", reports=self.reports_json())

    def reports_json(self) -> list[dict[str, Any]]:
        return [asdict(report) for report in self.reports]


# -- filters ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """One rule a host must pass, as an SQL predicate (``passes``).

    For the explain path: the hosts it removes are grouped by ``key`` (one report per value, or one
    report when None), ``measure`` is summarised as ``low``/``high`` per group, and ``reason`` turns a
    group's row (``key``, ``hosts``, ``low``, ``high``) into words.
    """

    name: str
    passes: sa.ColumnElement[bool]
    reason: Callable[[RowMapping], str]
    key: sa.ColumnElement[Any] | None = None
    measure: sa.ColumnElement[int] | None = None


def _state() -> Filter:
    return Filter("state", _HOST.state == HostState.ENABLED.value, lambda g: str(g["key"]), key=_HOST.state)


def _architecture(arch: str) -> Filter:
    return Filter(
        "architecture", _HOST.arch == arch, lambda g: f"{g['key']}, the image needs {arch}", key=_HOST.arch
    )


def _accelerator() -> Filter:
    return Filter(
        "accelerator",
        _HOST.accelerator == "kvm",
        lambda g: f"{g['key']} only, the image needs kvm",
        key=_HOST.accelerator,
    )


def _capacity(request: PlacementRequest) -> Filter:
    """Free vCPUs, RAM and disk after the claims made so far; a removed host is reported under the
    first resource it lacks (RAM, then vCPUs, then disk), with the most any of them has free."""
    checks = (
        ("RAM", _HOST.free_memory_mib, request.memory_mib, " MiB"),
        ("vCPUs", _HOST.free_vcpus, request.vcpus, ""),
        ("disk", _HOST.free_disk_gib, request.disk_gib, " GiB"),
    )
    needs = {label: (needed, unit) for label, _, needed, unit in checks}

    def reason(group: RowMapping) -> str:
        needed, unit = needs[group["key"]]
        free = group["high"] if group["low"] == group["high"] else f"at most {group['high']}"
        return f"{group['key']}: {free}{unit} free, {needed} needed"

    return Filter(
        "capacity",
        sa.and_(*(free >= needed for _, free, needed, _ in checks)),
        reason,
        key=sa.case(*((free < needed, label) for label, free, needed, _ in checks), else_=""),
        measure=sa.case(*((free < needed, free) for _, free, needed, _ in checks), else_=0),
    )


def _server_group(group_id: str, policy: str) -> Filter:
    members_hosts = sa.select(allocations.c.host_id).where(allocations.c.server_group_id == group_id)
    if policy == Policy.AFFINITY:
        return Filter(
            "server-group",
            sa.or_(~members_hosts.exists(), _HOST.host_id.in_(members_hosts)),
            lambda _: "affinity: the group's servers run on another host",
        )
    return Filter(
        "server-group",
        _HOST.host_id.not_in(members_hosts),
        lambda _: "anti-affinity: a server of the group runs there",
    )


def _excluded(host_ids: frozenset[str]) -> Filter:
    return Filter(
        "excluded", _HOST.host_id.not_in(sorted(host_ids)), lambda _: "this server failed there before"
    )


def filters(request: PlacementRequest) -> list[Filter]:
    """The filters a request goes through, cheap and restrictive ones first."""
    chain = [_state(), _architecture(request.arch)]
    if request.require_kvm:
        chain.append(_accelerator())
    chain.append(_capacity(request))
    if request.server_group_id is not None and request.group_policy is not None:
        chain.append(_server_group(request.server_group_id, request.group_policy))
    if request.excluded_hosts:
        chain.append(_excluded(request.excluded_hosts))
    return chain


# -- the explain path -------------------------------------------------------------------------------


def _names(conn: Connection, where: sa.ColumnElement[bool]) -> list[str]:
    query = (
        sa.select(resources.c.name)
        .select_from(host_capacity.join(resources, resources.c.id == _HOST.host_id))
        .where(where)
        .order_by(resources.c.name)
        .limit(MAX_NAMES)
    )
    return list(conn.execute(query).scalars())


def _removed_by(conn: Connection, rule: Filter, where: sa.ColumnElement[bool]) -> list[FilterReport]:
    """The reports of one filter over the hosts in ``where`` that it removes."""
    columns: list[sa.ColumnElement[Any]] = [sa.func.count().label("hosts")]
    if rule.key is not None:
        columns.append(rule.key.label("key"))
    if rule.measure is not None:
        columns += [sa.func.min(rule.measure).label("low"), sa.func.max(rule.measure).label("high")]
    query = sa.select(*columns).select_from(host_capacity).where(where)
    if rule.key is not None:
        query = query.group_by(rule.key)
    groups = sorted(conn.execute(query).mappings(), key=lambda group: str(group.get("key")))
    reports = []
    for group in groups:
        if not group["hosts"]:
            continue
        in_group = where if rule.key is None else sa.and_(where, rule.key == group["key"])
        names = _names(conn, in_group)
        reports.append(FilterReport(rule.name, names, rule.reason(group), more=group["hosts"] - len(names)))
    return reports


def explain(conn: Connection, chain: list[Filter]) -> list[FilterReport]:
    """Apply the filters one after another: which filter removed which of the hosts still in."""
    reports: list[FilterReport] = []
    passed: list[sa.ColumnElement[bool]] = []
    for rule in chain:
        reports += _removed_by(conn, rule, sa.and_(sa.true(), *passed, sa.not_(rule.passes)))
        passed.append(rule.passes)
    return reports


# -- the fast path and the claim --------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    placement: Placement
    generation: int


def _placement(row: RowMapping) -> Placement:
    return Placement(
        host_id=row["host_id"], host_name=row["name"], uri=row["spec"]["uri"], accelerator=row["accelerator"]
    )


def _hosts_query() -> sa.Select[Any]:
    return sa.select(
        _HOST.host_id, _HOST.generation, _HOST.accelerator, resources.c.name, resources.c.spec
    ).select_from(host_capacity.join(resources, resources.c.id == _HOST.host_id))


def fast_path(chain: list[Filter], settings: Settings) -> sa.Select[Any]:
    """The best ``scheduler_subset_size`` hosts that pass every filter, in one indexed query."""
    return (
        _hosts_query()
        .where(*(rule.passes for rule in chain))
        .order_by(*_WEIGHERS[settings.scheduler_weigher])
        .limit(settings.scheduler_subset_size)
    )


def _candidates(conn: Connection, chain: list[Filter], settings: Settings) -> list[_Candidate]:
    rows = conn.execute(fast_path(chain, settings)).mappings()
    return [_Candidate(_placement(row), row["generation"]) for row in rows]


def _existing(conn: Connection, consumer_id: str) -> Placement | None:
    """Where the consumer already holds an allocation (a retried scheduling step claims nothing)."""
    held = placement_store.allocation_of(conn, consumer_id)
    if held is None:
        return None
    return _placement(conn.execute(_hosts_query().where(_HOST.host_id == held.host_id)).mappings().one())


def _claim(conn: Connection, request: PlacementRequest, candidate: _Candidate) -> bool:
    return placement_store.claim(
        conn,
        candidate.placement.host_id,
        candidate.generation,
        request.consumer_id,
        request.project_id,
        request.vcpus,
        request.memory_mib,
        request.disk_gib,
        request.server_group_id,
    )


def _attempt(
    conn: Connection, request: PlacementRequest, chain: list[Filter], settings: Settings
) -> tuple[Placement, str] | str:
    """One try, in the caller's transaction: ``(placement, outcome)``, or the name of a host that
    another scheduler changed under this one (its claim was lost: try again)."""
    if request.server_group_id is not None:
        resource_store.get(conn, request.server_group_id, kind=SERVER_GROUP_KIND, for_update=True)
    existing = _existing(conn, request.consumer_id)
    if existing is not None:
        return existing, "existing"
    candidates = _candidates(conn, chain, settings)
    if not candidates:
        reports = explain(conn, chain)
        passing = [] if reports else _names(conn, sa.and_(sa.true(), *(rule.passes for rule in chain)))
        if not passing:
            raise NoValidHost(request, reports)
        return passing[0]  # it had room again by the time the explain path looked
    chosen = random.choice(candidates)
    if _claim(conn, request, chosen):
        return chosen.placement, "placed"
    return chosen.placement.host_name


def _place(db: Database, request: PlacementRequest, settings: Settings) -> tuple[Placement, str]:
    chain = filters(request)
    lost: list[str] = []
    for _ in range(settings.scheduler_max_attempts):
        try:
            with db.write() as conn:
                result = _attempt(conn, request, chain, settings)
        except placement_store.AlreadyAllocated as exc:
            result = exc.extensions["host_name"]  # another scheduler placed this very consumer
        if isinstance(result, tuple):
            return result
        CLAIM_CONFLICTS.inc()
        lost.append(result)
    with db.read() as conn:
        existing = _existing(conn, request.consumer_id)
        if existing is not None:
            return existing, "existing"
        reports = explain(conn, chain)
    names = sorted(set(lost))
    reason = f"{len(lost)} claim(s) lost to concurrent schedulers; try again"
    raise NoValidHost(
        request, [*reports, FilterReport("claim", names[:MAX_NAMES], reason, len(names[MAX_NAMES:]))]
    )


def place(db: Database, request: PlacementRequest, settings: Settings) -> Placement:
    """Choose a host for the request and claim its resources there, in one transaction.

    Returns the existing placement when the consumer holds an allocation already. Raises
    ``NoValidHost`` (409) naming, per filter, the hosts it removed and why.
    """
    started = time.monotonic()
    outcome = "error"
    try:
        placement, outcome = _place(db, request, settings)
        return placement
    except NoValidHost:
        outcome = "no_valid_host"
        raise
    finally:
        PLACEMENTS.labels(outcome).inc()
        PLACEMENT_DURATION.labels(outcome).observe(time.monotonic() - started)
