"""Hosts: reading what a libvirt host offers, and keeping its state true.

Registration queues ``host.refresh``, which connects to the host's libvirt URI and records its
inventory and capacity. A periodic health check reconnects to every host: one that stops
answering goes ``down``; one that answers again returns to the state its operator chose.
Every status write goes through :func:`update_status`, which also mirrors the host into the
scheduler's view (``store.placement.sync_host``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from sovra.config import Settings
from sovra.domain.host import HOST_KIND, Capacity, HostSpec, HostState, capacity
from sovra.domain.operation import Operation
from sovra.domain.resource import Resource, Status
from sovra.operations.context import StepContext
from sovra.operations.errors import RetryableError
from sovra.operations.registry import Registry, Step
from sovra.store import operations as operation_store
from sovra.store import placement as placement_store
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.store.types import utcnow
from sovra.virt.driver import HostInventory, HostUnreachable, UnsupportedURI, connect

log = logging.getLogger(__name__)
REFRESH_VERB = "host.refresh"
HEALTH_CHECK_SECONDS = 30
CONNECT_TIMEOUT_SECONDS = 10.0


def observed(status: Status, spec: HostSpec, inventory: HostInventory) -> Status:
    """The status of a host that answered: its operator's state, its inventory, its capacity."""
    facts: dict[str, Any] = {
        "inventory": {k: getattr(inventory, k) for k in inventory.__dataclass_fields__},
        "capacity": capacity(
            inventory.cpus, inventory.memory_mib, inventory.disk_gib, spec.allocation_ratios
        ).model_dump(),
        "last_seen": utcnow().isoformat(),
        "reason": "",
    }
    extra = {**(status.model_extra or {}), **facts}
    return Status.model_validate(
        {**status.model_dump(exclude=set(extra)), **extra, "state": spec.admin_state}
    )


def unreachable(status: Status, reason: str) -> Status:
    extra = {**(status.model_extra or {}), "reason": reason}
    return Status.model_validate({**status.model_dump(exclude=set(extra)), **extra, "state": HostState.DOWN})


def update_status(conn: Connection, host_id: str, change: Callable[[Status], Status]) -> Resource:
    """Write the host's status, and its state, architecture, accelerator and capacity into the
    scheduler's view. A host that never reported an inventory stays out of it: nothing is placed there."""
    host = resource_store.update_status(conn, host_id, change)
    facts = host.status.model_extra or {}
    inventory, offered = facts.get("inventory"), facts.get("capacity")
    if inventory and offered:
        placement_store.sync_host(
            conn,
            host.id,
            state=host.status.state,
            arch=inventory["arch"],
            accelerator=inventory["accelerator"],
            capacity=Capacity.model_validate(offered),
        )
    return host


def create(
    conn: Connection,
    *,
    name: str,
    spec: HostSpec,
    labels: dict[str, str],
    principal: str,
    origin_request_id: str | None,
) -> tuple[Resource, Operation]:
    """Record a host (``registering``) and queue the ``host.refresh`` that reads its inventory."""
    host = resource_store.create(
        conn,
        kind=HOST_KIND,
        name=name,
        project_id=None,
        labels=labels,
        spec=spec.model_dump(mode="json"),
        state=HostState.REGISTERING,
    )
    return host, refresh(conn, host.id, principal, origin_request_id)


def refresh(conn: Connection, host_id: str, principal: str, origin_request_id: str | None) -> Operation:
    operation, _ = operation_store.create(
        conn,
        verb=REFRESH_VERB,
        principal=principal,
        project_id=None,
        target_id=host_id,
        target_kind=HOST_KIND,
        origin_request_id=origin_request_id,
    )
    return operation


def register_local(db: Database, uri: str) -> Resource | None:
    """``sovra up``: register this machine's libvirt as host ``local`` when no host is registered
    yet and ``uri`` answers. Returns the new host, or None when nothing was done."""
    with db.read() as conn:
        if resource_store.list_page(
            conn, kind=HOST_KIND, project_ids=None, selector=[], page_size=1, page_token=None
        ).items:
            return None
    try:
        probe(uri)
    except (HostUnreachable, UnsupportedURI) as exc:
        log.info("no local host registered: %s", exc)
        return None
    with db.write() as conn:
        host, _ = create(
            conn,
            name="local",
            spec=HostSpec(uri=uri),
            labels={},
            principal="sovra up",
            origin_request_id=None,
        )
    return host


def probe(uri: str) -> HostInventory:
    driver = connect(uri, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        return driver.inventory()
    finally:
        driver.close()


def _refresh(ctx: StepContext) -> dict[str, Any]:
    with ctx.db.read() as conn:
        host = resource_store.get(conn, ctx.operation.target_id or "", kind=HOST_KIND)
    spec = HostSpec.model_validate(host.spec)
    try:
        inventory = probe(spec.uri)
    except HostUnreachable as exc:
        raise RetryableError("HOST_UNREACHABLE", str(exc)) from exc
    with ctx.db.write() as conn:
        update_status(conn, host.id, lambda s: observed(s, spec, inventory))
    return {"cpus": inventory.cpus, "memory_mib": inventory.memory_mib, "accelerator": inventory.accelerator}


def _mark_down(conn: Connection, operation: Operation) -> None:
    reason = operation.error.message if operation.error else str(operation.state)
    update_status(conn, operation.target_id or "", lambda s: unreachable(s, reason))


def apply_spec(status: Status, spec: HostSpec) -> Status:
    """After an operator changes a host: its chosen state (unless it is down) and new capacity."""
    extra = dict(status.model_extra or {})
    inventory = extra.get("inventory")
    if inventory:
        extra["capacity"] = capacity(
            inventory["cpus"], inventory["memory_mib"], inventory["disk_gib"], spec.allocation_ratios
        ).model_dump()
    state = status.state if status.state in (HostState.DOWN, HostState.REGISTERING) else spec.admin_state
    return Status.model_validate({**status.model_dump(exclude=set(extra)), **extra, "state": state})


def health_check(db: Database, settings: Settings) -> None:
    """Reconnect to every registered host and record whether it answers."""
    with db.read() as conn:
        hosts = resource_store.list_page(
            conn, kind=HOST_KIND, project_ids=None, selector=[], page_size=100_000, page_token=None
        ).items
    for host in hosts:
        if host.status.state == HostState.REGISTERING:
            continue
        _check(db, host)


def _check(db: Database, host: Resource) -> None:
    spec = HostSpec.model_validate(host.spec)
    try:
        inventory = probe(spec.uri)
    except HostUnreachable as exc:
        reason = str(exc)
        if host.status.state != HostState.DOWN:
            log.warning("host %s (%s) is down: %s", host.name, spec.uri, reason)
        with db.write() as conn:
            update_status(conn, host.id, lambda s: unreachable(s, reason))
        return
    with db.write() as conn:
        update_status(conn, host.id, lambda s: observed(s, spec, inventory))


def register(registry: Registry) -> None:
    registry.register(
        REFRESH_VERB,
        [Step("inventory", _refresh, deadline_seconds=60, max_attempts=3, retry_base_seconds=2)],
        on_end=_mark_down,
    )
    registry.add_periodic("host-health", HEALTH_CHECK_SECONDS, health_check)
