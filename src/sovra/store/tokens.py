"""API tokens: stored as a SHA-256 of the secret, never the secret itself."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, RowMapping

from sovra.domain.errors import NotFound
from sovra.domain.identity import Role
from sovra.domain.ids import is_id, new_id
from sovra.store.schema import api_tokens
from sovra.store.types import utcnow

LAST_USED_PRECISION = timedelta(seconds=60)
"""``last_used_at`` is refreshed at most this often, so that reads do not each cost a write."""


class ApiToken(BaseModel):
    """What Sovra knows about a token; the secret is not part of it."""

    id: str
    name: str
    project_id: str | None
    role: str
    hint: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def role_value(self) -> Role:
        return Role.parse(self.role)

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and self.expires_at > now


def _to_token(row: RowMapping) -> ApiToken:
    return ApiToken.model_validate({k: row[k] for k in ApiToken.model_fields})


def create(
    conn: Connection,
    *,
    name: str,
    project_id: str | None,
    role: Role,
    secret_hash: str,
    hint: str,
    created_by: str,
    expires_at: datetime,
) -> ApiToken:
    row: dict[str, Any] = {
        "id": new_id(),
        "name": name,
        "project_id": project_id,
        "role": str(role),
        "secret_hash": secret_hash,
        "hint": hint,
        "created_by": created_by,
        "created_at": utcnow(),
        "expires_at": expires_at,
        "revoked_at": None,
        "last_used_at": None,
    }
    conn.execute(sa.insert(api_tokens).values(**row))
    return ApiToken.model_validate(row)


def find_by_hash(conn: Connection, secret_hash: str) -> ApiToken | None:
    row = (
        conn.execute(sa.select(api_tokens).where(api_tokens.c.secret_hash == secret_hash)).mappings().first()
    )
    return _to_token(row) if row else None


def get(conn: Connection, token_id: str) -> ApiToken:
    row = (
        conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).mappings().first()
        if is_id(token_id)
        else None
    )
    if row is None:
        raise NotFound(f"token {token_id!r} not found")
    return _to_token(row)


def list_tokens(
    conn: Connection,
    *,
    project_id: str | None = None,
    created_by: str | None = None,
    any_project: bool = False,
) -> list[ApiToken]:
    """Tokens of one project (``project_id``), or global ones, optionally only one creator's."""
    query = sa.select(api_tokens).order_by(api_tokens.c.id)
    if not any_project:
        query = query.where(
            api_tokens.c.project_id == project_id
            if project_id is not None
            else api_tokens.c.project_id.is_(None)
        )
    if created_by is not None:
        query = query.where(api_tokens.c.created_by == created_by)
    return [_to_token(r) for r in conn.execute(query).mappings()]


def revoke(conn: Connection, token_id: str) -> ApiToken:
    conn.execute(
        sa.update(api_tokens)
        .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return get(conn, token_id)


def touch(conn: Connection, token: ApiToken, now: datetime) -> None:
    """Record use, at most once per ``LAST_USED_PRECISION``."""
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_PRECISION:
        return
    conn.execute(sa.update(api_tokens).where(api_tokens.c.id == token.id).values(last_used_at=now))


def admin_tokens_exist(conn: Connection) -> bool:
    query = sa.select(api_tokens.c.id).where(api_tokens.c.role == str(Role.ADMIN)).limit(1)
    return conn.execute(query).first() is not None


def revoke_all_of_project(conn: Connection, project_ids: Sequence[str]) -> None:
    conn.execute(
        sa.update(api_tokens)
        .where(api_tokens.c.project_id.in_(project_ids), api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
