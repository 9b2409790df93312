"""The operation repository: creation with idempotency and the per-resource mutex, claiming
with leases, step records, completion, cancellation and the reaper's query.

Every write a worker makes is conditional on it still holding the lease
(``WHERE lease_owner = :worker``), so a worker that lost its lease cannot overwrite the work of
the one that took over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from sovra.domain.errors import Conflict, NotFound
from sovra.domain.ids import is_id, new_id
from sovra.domain.operation import (
    ACTIVE_STATES,
    ErrorInfo,
    Operation,
    OperationState,
    StepRecord,
    StepState,
)
from sovra.store import resources as resource_store
from sovra.store.pagination import Page, decode_token, paginate, query_fingerprint
from sovra.store.schema import operation_steps, operations
from sovra.store.types import utcnow


class LeaseLost(Exception):
    """The worker no longer holds the operation: another worker took it over."""


def _steps(conn: Connection, operation_id: str) -> list[StepRecord]:
    rows = conn.execute(
        sa.select(operation_steps)
        .where(operation_steps.c.operation_id == operation_id)
        .order_by(operation_steps.c.id)
    ).mappings()
    return [
        StepRecord(
            name=r["name"],
            attempt=r["attempt"],
            worker=r["worker"],
            state=StepState(r["state"]),
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            result=r["result"],
            error=ErrorInfo.model_validate(r["error"]) if r["error"] else None,
        )
        for r in rows
    ]


def _to_operation(row: RowMapping, steps: list[StepRecord] | None = None) -> Operation:
    data: dict[str, Any] = {c.name: row[c.name] for c in operations.c if c.name != "request_key"}
    data["error"] = ErrorInfo.model_validate(row["error"]) if row["error"] else None
    data["steps"] = steps or []
    return Operation.model_validate(data)


def _request_key(project_id: str | None, request_id: str) -> str:
    return f"{project_id or '-'}:{request_id}"


def active_for(conn: Connection, target_id: str) -> Operation | None:
    row = (
        conn.execute(
            sa.select(operations).where(
                operations.c.target_id == target_id,
                operations.c.state.in_([str(s) for s in ACTIVE_STATES]),
            )
        )
        .mappings()
        .first()
    )
    return _to_operation(row) if row else None


def _blocked(target_id: str, blocking: Operation) -> Conflict:
    return Conflict(
        f"operation {blocking.id} ({blocking.verb}, {blocking.state}) is already running on "
        f"{target_id}; wait for it (sovra op wait {blocking.id}) or cancel it",
        blocking_operation=blocking.id,
    )


def create(
    conn: Connection,
    *,
    verb: str,
    principal: str,
    project_id: str | None,
    target_id: str | None = None,
    target_kind: str | None = None,
    params: dict[str, Any] | None = None,
    request_id: str | None = None,
    origin_request_id: str | None = None,
) -> tuple[Operation, bool]:
    """Create an operation, or return the one this ``request_id`` already made.

    Returns ``(operation, created)``. Raises ``Conflict`` when another operation is active on the
    target, or when the ``request_id`` was used for a different request.
    """
    if request_id is not None:
        existing = find_by_request_id(conn, project_id, request_id)
        if existing is not None:
            if existing.verb != verb or existing.target_id != target_id:
                raise Conflict(
                    f"request_id {request_id!r} was already used for a different request "
                    f"({existing.verb} on {existing.target_id}); use a new request_id",
                    field="request_id",
                )
            return existing, False
    if target_id is not None and (blocking := active_for(conn, target_id)) is not None:
        raise _blocked(target_id, blocking)
    now = utcnow()
    row: dict[str, Any] = {
        "id": new_id(),
        "project_id": project_id,
        "target_id": target_id,
        "target_kind": target_kind,
        "verb": verb,
        "state": str(OperationState.PENDING),
        "progress": 0,
        "progress_message": "",
        "params": params or {},
        "result": None,
        "error": None,
        "request_id": request_id,
        "request_key": _request_key(project_id, request_id) if request_id else None,
        "principal": principal,
        "origin_request_id": origin_request_id,
        "attempt": 0,
        "cancel_requested": False,
        "lease_owner": None,
        "lease_expires_at": None,
        "not_before": now,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
        "version": 1,
    }
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(operations).values(**row))
    except IntegrityError as exc:  # lost a race: a concurrent request won the mutex or the key
        if target_id is not None and (blocking := active_for(conn, target_id)) is not None:
            raise _blocked(target_id, blocking) from exc
        raise Conflict("a concurrent request with the same request_id won; retry to get it") from exc
    if target_id is not None:
        resource_store.update_status(
            conn, target_id, lambda s: s.model_copy(update={"operation_id": row["id"]})
        )
    return _to_operation(row), True  # type: ignore[arg-type]


def find_by_request_id(conn: Connection, project_id: str | None, request_id: str) -> Operation | None:
    """The operation an earlier request with this ``request_id`` made in this project, if any."""
    row = (
        conn.execute(
            sa.select(operations).where(operations.c.request_key == _request_key(project_id, request_id))
        )
        .mappings()
        .first()
    )
    return _to_operation(row, _steps(conn, row["id"])) if row else None


def get(conn: Connection, operation_id: str, project_ids: Sequence[str] | None = None) -> Operation:
    if not is_id(operation_id):
        raise NotFound(f"operation {operation_id!r} not found")
    query = sa.select(operations).where(operations.c.id == operation_id)
    if project_ids is not None:
        query = query.where(operations.c.project_id.in_(project_ids))
    row = conn.execute(query).mappings().first()
    if row is None:
        raise NotFound(f"operation {operation_id!r} not found")
    return _to_operation(row, _steps(conn, operation_id))


def list_page(
    conn: Connection,
    *,
    project_ids: Sequence[str] | None,
    page_size: int,
    page_token: str | None,
    project_id: str | None = None,
    target_id: str | None = None,
    state: OperationState | None = None,
    verb: str | None = None,
) -> Page[Operation]:
    """Newest first, so that ``op list`` shows what just happened."""
    fingerprint = query_fingerprint("operations", project_id, target_id, state, verb)
    before = decode_token(page_token, fingerprint)
    query = sa.select(operations)
    if project_ids is not None:
        query = query.where(operations.c.project_id.in_(project_ids))
    for column, value in (
        (operations.c.project_id, project_id),
        (operations.c.target_id, target_id),
        (operations.c.state, str(state) if state else None),
        (operations.c.verb, verb),
    ):
        if value is not None:
            query = query.where(column == value)
    if before is not None:
        query = query.where(operations.c.id < before)
    query = query.order_by(operations.c.id.desc()).limit(page_size + 1)
    rows = [_to_operation(r) for r in conn.execute(query).mappings()]
    return paginate(rows, page_size, "id", fingerprint)


def claim(conn: Connection, worker: str, lease_seconds: float, verbs: Sequence[str]) -> Operation | None:
    """Take the oldest due PENDING operation with one of ``verbs`` and lease it to ``worker``.

    A worker only claims the verbs it has handlers for, so workers of different versions or with
    different plugins can share one queue.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets many workers claim in parallel without waiting on
    each other. SQLite: the write transaction already holds the database lock.
    """
    now = utcnow()
    candidate = (
        sa.select(operations.c.id)
        .where(
            operations.c.state == str(OperationState.PENDING),
            operations.c.not_before <= now,
            operations.c.verb.in_(verbs),
        )
        .order_by(operations.c.not_before)
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    statement = (
        sa.update(operations)
        .where(operations.c.id == candidate.scalar_subquery())
        .values(
            state=str(OperationState.RUNNING),
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempt=operations.c.attempt + 1,
            started_at=sa.func.coalesce(operations.c.started_at, now),
            updated_at=now,
            version=operations.c.version + 1,
        )
        .returning(*operations.c)
    )
    row = conn.execute(statement).mappings().first()
    return _to_operation(row) if row else None


def _owned(worker: str, operation_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        operations.c.id == operation_id,
        operations.c.lease_owner == worker,
        operations.c.state == str(OperationState.RUNNING),
    )


def renew_lease(
    conn: Connection, operation_ids: Sequence[str], worker: str, lease_seconds: float
) -> dict[str, bool]:
    """Extend the leases ``worker`` holds; returns ``{id: cancel_requested}`` for those still held."""
    if not operation_ids:
        return {}
    now = utcnow()
    rows = conn.execute(
        sa.update(operations)
        .where(
            operations.c.id.in_(operation_ids),
            operations.c.lease_owner == worker,
            operations.c.state == str(OperationState.RUNNING),
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
        .returning(operations.c.id, operations.c.cancel_requested)
    ).all()
    return {r[0]: bool(r[1]) for r in rows}


def succeeded_steps(conn: Connection, operation_id: str) -> dict[str, Any]:
    """Results of the steps already done, by name: a resumed operation skips them."""
    rows = conn.execute(
        sa.select(operation_steps.c.name, operation_steps.c.result).where(
            operation_steps.c.operation_id == operation_id,
            operation_steps.c.state == str(StepState.SUCCEEDED),
        )
    ).all()
    return dict(rows)


def failed_attempts(conn: Connection, operation_id: str, step: str) -> int:
    count: int = conn.execute(
        sa.select(sa.func.count()).where(
            operation_steps.c.operation_id == operation_id,
            operation_steps.c.name == step,
            operation_steps.c.state == str(StepState.FAILED),
        )
    ).scalar_one()
    return count


def start_step(conn: Connection, operation_id: str, worker: str, name: str) -> int:
    """Record that ``worker`` begins step ``name``; returns the step record's id.

    One statement: the insert happens only while ``worker`` holds the lease, and the attempt number
    counts the failed attempts of the step so far.
    """
    failed = (
        sa.select(sa.func.count())
        .where(
            operation_steps.c.operation_id == operation_id,
            operation_steps.c.name == name,
            operation_steps.c.state == str(StepState.FAILED),
        )
        .scalar_subquery()
    )
    held = sa.exists().where(_owned(worker, operation_id))
    values = sa.select(
        sa.literal(operation_id, operation_steps.c.operation_id.type),
        sa.literal(name, operation_steps.c.name.type),
        failed + 1,
        sa.literal(worker, operation_steps.c.worker.type),
        sa.literal(str(StepState.RUNNING), operation_steps.c.state.type),
        sa.literal(utcnow(), operation_steps.c.started_at.type),
    ).where(held)
    step_id = conn.execute(
        sa.insert(operation_steps)
        .from_select(["operation_id", "name", "attempt", "worker", "state", "started_at"], values)
        .returning(operation_steps.c.id)
    ).scalar()
    if step_id is None:
        raise LeaseLost(operation_id)
    return int(step_id)


def finish_step(
    conn: Connection,
    operation_id: str,
    step_id: int,
    worker: str,
    *,
    result: Any = None,
    error: ErrorInfo | None = None,
) -> None:
    """Close a step record; refused (``LeaseLost``) if the lease moved to another worker."""
    closed = conn.execute(
        sa.update(operation_steps)
        .where(
            operation_steps.c.id == step_id,
            operation_steps.c.state == str(StepState.RUNNING),
            sa.exists().where(_owned(worker, operation_id)),
        )
        .values(
            state=str(StepState.FAILED if error else StepState.SUCCEEDED),
            finished_at=utcnow(),
            result=result,
            error=error.model_dump(mode="json") if error else None,
        )
    )
    if closed.rowcount == 1:
        return
    held = conn.execute(sa.select(operations.c.id).where(_owned(worker, operation_id))).first()
    if held is None:
        raise LeaseLost(operation_id)


def set_progress(conn: Connection, operation_id: str, worker: str, progress: int, message: str) -> None:
    result = conn.execute(
        sa.update(operations)
        .where(_owned(worker, operation_id))
        .values(progress=max(0, min(100, progress)), progress_message=message[:256], updated_at=utcnow())
    )
    if result.rowcount != 1:
        raise LeaseLost(operation_id)


def _release_target(conn: Connection, operation: RowMapping) -> None:
    target = operation["target_id"]
    if target is None:
        return
    with contextlib.suppress(NotFound):  # the operation may have deleted its own target
        resource_store.update_status(
            conn,
            target,
            lambda s: s.model_copy(update={"operation_id": None}) if s.operation_id == operation["id"] else s,
        )


def finish(
    conn: Connection,
    operation_id: str,
    worker: str | None,
    state: OperationState,
    *,
    result: Any = None,
    error: ErrorInfo | None = None,
) -> Operation:
    """Move an operation to a terminal state. ``worker=None`` is for operations no worker holds."""
    assert state.done
    now = utcnow()
    condition = (
        _owned(worker, operation_id)
        if worker is not None
        else sa.and_(operations.c.id == operation_id, operations.c.state == str(OperationState.PENDING))
    )
    row = (
        conn.execute(
            sa.update(operations)
            .where(condition)
            .values(
                state=str(state),
                progress=100 if state == OperationState.SUCCEEDED else operations.c.progress,
                progress_message=str(state).lower(),
                result=result,
                error=error.model_dump(mode="json") if error else None,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
                version=operations.c.version + 1,
            )
            .returning(*operations.c)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise LeaseLost(operation_id)
    _release_target(conn, row)
    return _to_operation(row)


def reschedule(conn: Connection, operation_id: str, worker: str, not_before: datetime) -> None:
    """Give the operation back to the queue (a retryable failure): it runs again after ``not_before``."""
    result = conn.execute(
        sa.update(operations)
        .where(_owned(worker, operation_id))
        .values(
            state=str(OperationState.PENDING),
            lease_owner=None,
            lease_expires_at=None,
            not_before=not_before,
            updated_at=utcnow(),
            version=operations.c.version + 1,
        )
    )
    if result.rowcount != 1:
        raise LeaseLost(operation_id)


def request_cancel(conn: Connection, operation_id: str, project_ids: Sequence[str] | None) -> Operation:
    """Cancel now if nobody runs it yet; otherwise ask the running worker to stop at a safe point."""
    operation = get(conn, operation_id, project_ids)
    if operation.done:
        raise Conflict(f"operation {operation_id} already ended ({operation.state}); nothing to cancel")
    if operation.state == OperationState.PENDING:
        try:
            finish(
                conn,
                operation_id,
                None,
                OperationState.CANCELLED,
                error=ErrorInfo(code="CANCELLED", message="cancelled before it started"),
            )
            return get(conn, operation_id)
        except LeaseLost:
            pass  # a worker claimed it meanwhile: fall through and ask that worker
    conn.execute(
        sa.update(operations)
        .where(operations.c.id == operation_id)
        .values(cancel_requested=True, updated_at=utcnow(), version=operations.c.version + 1)
    )
    return get(conn, operation_id)


def reap_expired(conn: Connection) -> list[str]:
    """Hand operations whose worker stopped renewing back to the queue; returns their ids.

    The step that was running is closed as failed with ``LEASE_EXPIRED`` so the audit trail shows
    which worker vanished; the step itself is idempotent and runs again on the next worker.
    """
    now = utcnow()
    expired = (
        conn.execute(
            sa.select(operations.c.id, operations.c.lease_owner)
            .where(operations.c.state == str(OperationState.RUNNING), operations.c.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        )
        .mappings()
        .all()
        if conn.dialect.name == "postgresql"
        else conn.execute(
            sa.select(operations.c.id, operations.c.lease_owner).where(
                operations.c.state == str(OperationState.RUNNING), operations.c.lease_expires_at < now
            )
        )
        .mappings()
        .all()
    )
    for row in expired:
        error = ErrorInfo(
            code="LEASE_EXPIRED",
            message=f"worker {row['lease_owner']} stopped renewing its lease; handed to another worker",
            retryable=True,
        )
        conn.execute(
            sa.update(operation_steps)
            .where(
                operation_steps.c.operation_id == row["id"],
                operation_steps.c.state == str(StepState.RUNNING),
            )
            .values(state=str(StepState.FAILED), finished_at=now, error=error.model_dump(mode="json"))
        )
        conn.execute(
            sa.update(operations)
            .where(operations.c.id == row["id"], operations.c.state == str(OperationState.RUNNING))
            .values(
                state=str(OperationState.PENDING),
                lease_owner=None,
                lease_expires_at=None,
                not_before=now,
                updated_at=now,
                version=operations.c.version + 1,
            )
        )
    return [r["id"] for r in expired]


def count_by_state_and_verb(conn: Connection) -> list[tuple[str, str, int]]:
    rows = conn.execute(
        sa.select(operations.c.state, operations.c.verb, sa.func.count()).group_by(
            operations.c.state, operations.c.verb
        )
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]
