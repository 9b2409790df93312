"""/v1/operations: the state of slow work, its steps (the audit trail) and cancellation."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Request

from sovra.api.deps import DB, Config, Context, PageSize, PageToken, TextFilter
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.api.schemas import ListResponse
from sovra.domain.operation import Operation, OperationState
from sovra.operations.registry import Registry, UnknownVerb
from sovra.store import operations as operation_store

router = APIRouter(prefix="/v1/operations", tags=["operations"], responses=PROBLEM_RESPONSES)


@router.get(
    "",
    response_model=ListResponse[Operation],
    response_model_exclude={"items": {"__all__": {"steps"}}},
)
def list_operations(
    ctx: Context,
    db: DB,
    settings: Config,
    project_id: TextFilter = None,
    target_id: TextFilter = None,
    state: OperationState | None = None,
    verb: TextFilter = None,
    page_size: PageSize = 100,
    page_token: PageToken = None,
) -> ListResponse[Operation]:
    """Newest first. Steps are left out of lists; read one operation to see them."""
    with db.read() as conn:
        page = operation_store.list_page(
            conn,
            project_ids=ctx.project_ids,
            page_size=min(page_size, settings.max_page_size),
            page_token=page_token,
            project_id=project_id,
            target_id=target_id,
            state=state,
            verb=verb,
        )
    return ListResponse[Operation](items=page.items, next_page_token=page.next_page_token)


@router.get("/{operation_id}", response_model=Operation)
def get_operation(operation_id: str, ctx: Context, db: DB) -> Operation:
    with db.read() as conn:
        return operation_store.get(conn, operation_id, ctx.project_ids)


@router.post("/{operation_id}:cancel", response_model=Operation)
def cancel_operation(operation_id: str, request: Request, ctx: Context, db: DB) -> Operation:
    """Cancel at once if it has not started; otherwise the worker stops at its next safe point."""
    with db.write() as conn:
        operation = operation_store.request_cancel(conn, operation_id, ctx.project_ids)
        if operation.state == OperationState.CANCELLED:  # it never started: no worker will clean up
            registry: Registry = request.app.state.registry
            with contextlib.suppress(UnknownVerb):
                hook = registry.get(operation.verb).on_end
                if hook is not None:
                    hook(conn, operation)
    return operation
