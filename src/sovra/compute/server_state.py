"""Reading and writing what Sovra knows about a server (its status), in one place.

Status facts besides ``state``: ``host`` (where it runs), ``flavor`` and ``image`` (what was
applied, copied in so that later edits of a flavor or image never change a running server's
record), ``volumes`` (names in the host's pool), ``power_state`` (the hypervisor's last word, with
``power_state_at``), and ``fault`` (why the last operation failed).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from sovra.domain.resource import Condition, ConditionStatus, Resource, Status, set_condition
from sovra.domain.server import ServerState
from sovra.store import resources as resource_store
from sovra.store.types import utcnow
from sovra.virt.driver import PowerState


def facts(server: Resource) -> dict[str, Any]:
    return dict(server.status.model_extra or {})


def fact(server: Resource, key: str) -> Any:
    return facts(server).get(key)


def with_facts(status: Status, **new: Any) -> Status:
    """``status`` with extra facts replaced (None removes a fact)."""
    extra = {**(status.model_extra or {}), **new}
    kept = {k: v for k, v in extra.items() if v is not None}
    return Status.model_validate({**status.model_dump(exclude=set(extra)), **kept})


def condition(kind: str, ok: bool, reason: str, message: str = "") -> Condition:
    return Condition(
        type=kind,
        status=ConditionStatus.TRUE if ok else ConditionStatus.FALSE,
        reason=reason,
        message=message,
        last_transition_time=utcnow(),
    )


def update(
    conn: Connection,
    server_id: str,
    *,
    state: ServerState | None = None,
    conditions: tuple[Condition, ...] = (),
    **new_facts: Any,
) -> Resource:
    """One status write: optional new state, conditions and facts."""

    def change(status: Status) -> Status:
        status = with_facts(status, **new_facts)
        for item in conditions:
            status = set_condition(status, item)
        if state is not None:
            status = status.model_copy(update={"state": str(state)})
        return status

    return resource_store.update_status(conn, server_id, change)


def power_facts(power: PowerState) -> dict[str, Any]:
    return {"power_state": str(power), "power_state_at": utcnow().isoformat()}


def fault(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message[:2000], "time": utcnow().isoformat()}
