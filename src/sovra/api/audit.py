"""/v1/audit: the audit trail, filtered to what the caller may see."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from sovra.api.deps import DB, Config, Context, PageSize, PageToken, TextFilter
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.api.schemas import ListResponse
from sovra.store import audit
from sovra.store.audit import AuditRecord

router = APIRouter(prefix="/v1", tags=["audit"], responses=PROBLEM_RESPONSES)


@router.get("/audit", response_model=ListResponse[AuditRecord])
def list_audit(
    ctx: Context,
    db: DB,
    settings: Config,
    project_id: TextFilter = None,
    principal: TextFilter = None,
    resource_id: TextFilter = None,
    since: Annotated[datetime | None, Query(description="Records at or after this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Records before this time (ISO 8601).")] = None,
    page_size: PageSize = 100,
    page_token: PageToken = None,
) -> ListResponse[AuditRecord]:
    """Newest first. Tenants see the records of their projects only; admins see everything.
    Times without a zone are taken as UTC."""
    since, until = (
        t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t for t in (since, until)
    )
    with db.read() as conn:
        page = audit.list_page(
            conn,
            visible_projects=ctx.project_ids,
            page_size=min(page_size, settings.max_page_size),
            page_token=page_token,
            project_id=project_id,
            principal=principal,
            resource_id=resource_id,
            since=since,
            until=until,
        )
    return ListResponse[AuditRecord](items=page.items, next_page_token=page.next_page_token)
