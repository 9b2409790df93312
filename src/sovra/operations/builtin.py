"""Handlers that ship with the core: ``noop`` (health checks and benchmarks) and project teardown."""

from __future__ import annotations

from typing import Any

from sovra.domain.edges import RelatedResource
from sovra.domain.project import ProjectState
from sovra.domain.server import SERVER_KIND
from sovra.operations.context import StepContext
from sovra.operations.errors import StepError
from sovra.operations.registry import Registry, Step
from sovra.store import graph, resources, tokens

PROJECT_DELETE = "project.delete"


def _noop(ctx: StepContext) -> dict[str, Any]:
    return {}


def _in_use(blockers: list[RelatedResource]) -> StepError:
    return StepError(
        "IN_USE",
        "still used by " + ", ".join(f"{b.kind} {b.name} ({b.id})" for b in blockers),
        dependents=[b.model_dump(mode="json") for b in blockers],
    )


def _check_unused(ctx: StepContext) -> dict[str, Any]:
    """Refuse to tear down what another project still uses (``uses`` edges from outside), and a
    project that still has servers (their domains and disks live on hosts)."""
    with ctx.db.read() as conn:
        doomed = graph.owned_closure(conn, ctx.operation.target_id or "")
        blockers = graph.blocking_users(conn, doomed)
        running = [r for r in resources.get_many(conn, doomed, project_ids=None) if r.kind == SERVER_KIND]
    if blockers:
        raise _in_use(blockers)
    if running:  # a server is a VM on a host: only its own delete operation may remove it
        raise StepError(
            "SERVERS_EXIST",
            f"the project still has {len(running)} server(s) ("
            + ", ".join(r.name for r in running[:10])
            + "); delete them first (sovra server delete), then the project",
        )
    return {"resources": len(doomed)}


def _teardown(ctx: StepContext) -> dict[str, Any]:
    """Delete everything the project owns, dependents before what they depend on, then the project.

    The project turns DELETING here, the point of no return; a refusal or a cancellation before it
    leaves the project ACTIVE. Each deletion is its own transaction and re-checks, under that
    transaction, that nothing outside still uses the resource, so a ``uses`` edge added after the
    first check still blocks. A resumed teardown simply continues: what is gone is not in the order.
    """
    root = ctx.operation.target_id or ""
    with ctx.db.write() as conn:
        resources.update_status(conn, root, lambda s: s.model_copy(update={"state": ProjectState.DELETING}))
        tokens.revoke_all_of_project(conn, [root])  # a project on its way out grants nothing
        order = graph.teardown_order(conn, root)
    doomed = [item.id for item in order]
    for position, item in enumerate(order, start=1):
        ctx.check()
        with ctx.db.write() as conn:
            blockers = graph.blocking_users(conn, doomed)
            if blockers:
                raise _in_use(blockers)
            resources.delete(conn, [item.id])
        if position % 50 == 0:
            ctx.progress(50 + 50 * position // len(order), f"deleted {position} of {len(order)}")
    return {"deleted": doomed}


def register(registry: Registry) -> None:
    registry.register("noop", [Step("noop", _noop, deadline_seconds=30)])
    registry.register(
        PROJECT_DELETE,
        [Step("check-unused", _check_unused, max_attempts=1), Step("teardown", _teardown)],
    )
