"""Keeping each server's observed power state true: libvirt lifecycle events, plus a resync.

Events make a guest that powered itself off, crashed or was killed show within a second; the
periodic resync catches what events cannot (a watcher that was down, a host that came back, a
domain deleted behind Sovra's back). Both go through :func:`observe`, which writes only when
something changed.

While an operation runs on a server, its steps own the state: an observation then only updates
``power_state``. When no operation runs, a server whose domain stopped is moved to SHUTOFF (or
ERROR when it crashed or vanished), and a server found running is ACTIVE, with a condition that
says what was seen.
"""

from __future__ import annotations

import logging
import threading

from sovra.compute import connections
from sovra.compute import server_state as state
from sovra.config import Settings
from sovra.domain.errors import NotFound
from sovra.domain.host import HOST_KIND, HostSpec, HostState
from sovra.domain.ids import is_id
from sovra.domain.resource import Condition, Resource
from sovra.domain.server import SERVER_KIND, ServerState, settled_state
from sovra.operations.registry import Registry
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.virt.driver import EventWatch, HostUnreachable, PowerState

log = logging.getLogger(__name__)

RESYNC_SECONDS = 10
WATCH_REFRESH_SECONDS = 5


def observe(db: Database, server_id: str, power: PowerState) -> bool:
    """Record what the hypervisor says about a server; True when anything changed."""
    if not is_id(server_id):
        return False  # not a Sovra domain
    with db.write() as conn:
        try:
            server = resource_store.get(conn, server_id, kind=SERVER_KIND, for_update=True)
        except NotFound:
            return False
        if not _differs(server, power):
            return False
        settled = _settled(server, power)
        conditions: tuple[Condition, ...] = ()
        if settled is not None:
            conditions = (state.condition("Running", settled == ServerState.ACTIVE, _reason(power)),)
        state.update(conn, server_id, state=settled, conditions=conditions, **state.power_facts(power))
    if settled is not None:
        log.info("server %s is now %s (hypervisor: %s)", server_id, settled, power)
    return True


def _settled(server: Resource, power: PowerState) -> ServerState | None:
    """The state a server without a running operation moves to, or None to leave it."""
    if server.status.operation_id is not None or power in (PowerState.UNKNOWN, PowerState.SHUTTING_DOWN):
        return None
    current = ServerState(server.status.state)
    if current not in (ServerState.ACTIVE, ServerState.SHUTOFF):
        return None  # ERROR stays until an operation clears it; BUILDING etc. have an operation
    if power in (PowerState.CRASHED, PowerState.MISSING):
        return ServerState.ERROR if current == ServerState.ACTIVE else None
    wanted = settled_state(power in (PowerState.RUNNING, PowerState.PAUSED))
    return wanted if wanted != current else None


def _reason(power: PowerState) -> str:
    return {
        PowerState.RUNNING: "FoundRunning",
        PowerState.PAUSED: "FoundPaused",
        PowerState.SHUTOFF: "GuestPoweredOff",
        PowerState.CRASHED: "GuestCrashed",
        PowerState.MISSING: "DomainMissing",
    }.get(power, "Observed")


# -- periodic resync --------------------------------------------------------------------------------


def resync(db: Database, settings: Settings) -> int:
    """Compare every placed server with its host's domains; the number of servers corrected."""
    changed = 0
    for host, servers in _servers_by_host(db):
        try:
            domains = connections.driver_for(HostSpec.model_validate(host.spec).uri).domains()
        except HostUnreachable:
            continue  # the host health check reports it; its servers' state is unknown, not off
        for server in servers:
            power = domains.get(server.id, PowerState.MISSING)
            if _differs(server, power):  # most servers did not change: no write for them
                changed += observe(db, server.id, power)
    return changed


def _differs(server: Resource, power: PowerState) -> bool:
    return state.fact(server, "power_state") != str(power) or _settled(server, power) is not None


def _servers_by_host(db: Database) -> list[tuple[Resource, list[Resource]]]:
    with db.read() as conn:
        hosts = {
            h.id: h
            for h in resource_store.list_page(
                conn, kind=HOST_KIND, project_ids=None, selector=[], page_size=100_000, page_token=None
            ).items
            if h.status.state not in (HostState.DOWN, HostState.REGISTERING)
        }
        servers = resource_store.list_page(
            conn, kind=SERVER_KIND, project_ids=None, selector=[], page_size=1_000_000, page_token=None
        ).items
    grouped: dict[str, list[Resource]] = {}
    for server in servers:
        host = state.fact(server, "host")
        if host and host["id"] in hosts and state.fact(server, "volumes"):
            grouped.setdefault(host["id"], []).append(server)
    return [(hosts[host_id], members) for host_id, members in grouped.items()]


# -- event watches ----------------------------------------------------------------------------------


class Watches:
    """One lifecycle-event watch per host URI in this process, kept in step with the host list."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[str, EventWatch] = {}

    def refresh(self, db: Database, settings: Settings) -> None:
        with db.read() as conn:
            hosts = resource_store.list_page(
                conn, kind=HOST_KIND, project_ids=None, selector=[], page_size=100_000, page_token=None
            ).items
        wanted = {
            HostSpec.model_validate(h.spec).uri
            for h in hosts
            if h.status.state not in (HostState.REGISTERING, HostState.DOWN)
        }  # a host that went down loses its watch; it gets a fresh one when it answers again
        with self._lock:
            dead = {uri for uri, watch in self._watches.items() if not watch.alive()}
            for uri in (set(self._watches) - wanted) | dead:
                self._watches.pop(uri).close()
            missing = wanted - set(self._watches)
        for uri in missing:
            self._watch(db, uri)
        if dead & wanted:  # events may have been missed while the watch was dead: look now
            resync(db, settings)

    def _watch(self, db: Database, uri: str) -> None:
        def on_event(domain: str, power: PowerState) -> None:
            try:
                observe(db, domain, power)
            except Exception:  # an event thread must survive a database hiccup
                log.exception("could not record power state %s of domain %s", power, domain)

        try:
            watch = connections.driver_for(uri).watch_events(on_event)
        except HostUnreachable:
            return  # tried again at the next refresh
        with self._lock:
            self._watches[uri] = watch


_watches = Watches()


def register(registry: Registry) -> None:
    registry.add_periodic("server-power-watch", WATCH_REFRESH_SECONDS, _watches.refresh)
    registry.add_periodic("server-power-resync", RESYNC_SECONDS, resync)
