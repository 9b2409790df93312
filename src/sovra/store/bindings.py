"""Role bindings: which principal or group holds which role in which project."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection

from sovra.domain.errors import NotFound
from sovra.domain.identity import Role
from sovra.store.schema import role_bindings
from sovra.store.types import utcnow

GROUP_PREFIX = "group:"


class RoleBinding(BaseModel):
    project_id: str
    subject: str
    role: str
    created_by: str
    created_at: datetime


def put(conn: Connection, project_id: str, subject: str, role: Role, created_by: str) -> RoleBinding:
    """Grant ``role`` to ``subject`` in the project, replacing any role it had there."""
    now = utcnow()
    conn.execute(
        sa.delete(role_bindings).where(
            role_bindings.c.project_id == project_id, role_bindings.c.subject == subject
        )
    )
    row = {
        "project_id": project_id,
        "subject": subject,
        "role": str(role),
        "created_by": created_by,
        "created_at": now,
    }
    conn.execute(sa.insert(role_bindings).values(**row))
    return RoleBinding.model_validate(row)


def remove(conn: Connection, project_id: str, subject: str) -> None:
    result = conn.execute(
        sa.delete(role_bindings).where(
            role_bindings.c.project_id == project_id, role_bindings.c.subject == subject
        )
    )
    if result.rowcount == 0:
        raise NotFound(f"{subject!r} has no role in project {project_id}")


def of_project(conn: Connection, project_id: str) -> list[RoleBinding]:
    rows = conn.execute(
        sa.select(role_bindings)
        .where(role_bindings.c.project_id == project_id)
        .order_by(role_bindings.c.subject)
    ).mappings()
    return [RoleBinding.model_validate(dict(r)) for r in rows]


def roles_of(conn: Connection, principal: str, groups: Iterable[str]) -> dict[str, Role]:
    """The highest role per project that the principal holds directly or through a group."""
    subjects = [principal, *(GROUP_PREFIX + g for g in groups)]
    rows = conn.execute(
        sa.select(role_bindings.c.project_id, role_bindings.c.role).where(
            role_bindings.c.subject.in_(subjects)
        )
    ).all()
    roles: dict[str, Role] = {}
    for project_id, role in rows:
        roles[project_id] = max(roles.get(project_id, Role.READER), Role.parse(role))
    return roles
