"""The audit trail: append-only records of every mutating call and every operation step."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection

from sovra.domain.ids import new_id
from sovra.store.pagination import Page, decode_token, paginate, query_fingerprint
from sovra.store.schema import audit_records
from sovra.store.types import utcnow


class AuditRecord(BaseModel):
    id: str
    time: datetime
    principal: str
    project_id: str | None
    action: str
    resource_kind: str | None
    resource_id: str | None
    result: str = Field(description="success, denied or failure")
    status_code: int | None
    request_id: str | None
    source: str | None
    details: dict[str, Any]


def record(
    conn: Connection,
    *,
    principal: str,
    action: str,
    result: str,
    project_id: str | None = None,
    resource_kind: str | None = None,
    resource_id: str | None = None,
    status_code: int | None = None,
    request_id: str | None = None,
    source: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        sa.insert(audit_records).values(
            id=new_id(),
            time=utcnow(),
            principal=principal[:256],
            project_id=project_id,
            action=action[:128],
            resource_kind=resource_kind,
            resource_id=resource_id[:128] if resource_id else None,
            result=result,
            status_code=status_code,
            request_id=request_id,
            source=source[:64] if source else None,
            details=details or {},
        )
    )


def list_page(
    conn: Connection,
    *,
    visible_projects: Sequence[str] | None,
    page_size: int,
    page_token: str | None,
    project_id: str | None = None,
    principal: str | None = None,
    resource_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[AuditRecord]:
    """Newest first. ``visible_projects`` None means everything (admins), including global records."""
    fingerprint = query_fingerprint("audit", project_id, principal, resource_id, since, until)
    before = decode_token(page_token, fingerprint)
    query = sa.select(audit_records)
    if visible_projects is not None:
        query = query.where(audit_records.c.project_id.in_(visible_projects))
    for column, value in (
        (audit_records.c.project_id, project_id),
        (audit_records.c.principal, principal),
        (audit_records.c.resource_id, resource_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(audit_records.c.time >= since)
    if until is not None:
        query = query.where(audit_records.c.time < until)
    if before is not None:
        query = query.where(audit_records.c.id < before)
    rows = conn.execute(query.order_by(audit_records.c.id.desc()).limit(page_size + 1)).mappings()
    return paginate([AuditRecord.model_validate(dict(r)) for r in rows], page_size, "id", fingerprint)
