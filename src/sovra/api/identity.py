"""/v1/whoami and /v1/projects/{id}/members: who the caller is, and who holds roles in a project."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from sovra.api.deps import DB, Context
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.auth import policy
from sovra.domain.errors import InvalidArgument
from sovra.domain.identity import Role
from sovra.store import bindings
from sovra.store.bindings import RoleBinding

router = APIRouter(prefix="/v1", tags=["identity"], responses=PROBLEM_RESPONSES)

Subject = Annotated[
    str,
    Path(
        min_length=3,
        max_length=256,
        description="A principal (as /v1/whoami shows it, e.g. oidc:https://idp/realms/x#sub) "
        "or a group as group:<name>.",
    ),
]


class WhoAmI(BaseModel):
    principal: str
    display_name: str
    is_admin: bool
    roles: dict[str, str] = Field(description="Project id to role.")
    token_id: str | None


class MemberRole(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(description="reader, member or manager", max_length=16)


class MemberList(BaseModel):
    items: list[RoleBinding]


@router.get("/whoami", response_model=WhoAmI)
def whoami(ctx: Context) -> WhoAmI:
    """The caller as Sovra sees it: principal, admin or not, and roles by project."""
    return WhoAmI(
        principal=ctx.principal,
        display_name=ctx.display_name,
        is_admin=ctx.is_admin,
        roles={project: str(role) for project, role in ctx.roles.items()},
        token_id=ctx.token_id,
    )


@router.get("/projects/{project_id}/members", response_model=MemberList)
def list_members(project_id: str, ctx: Context, db: DB) -> MemberList:
    with db.read() as conn:
        return MemberList(items=bindings.of_project(conn, project_id))


@router.put("/projects/{project_id}/members/{subject:path}", response_model=RoleBinding)
def put_member(project_id: str, subject: Subject, body: MemberRole, ctx: Context, db: DB) -> RoleBinding:
    """Give a principal or a group a role in the project (replacing the one it had)."""
    if not (subject.startswith(bindings.GROUP_PREFIX) or ":" in subject):
        raise InvalidArgument(
            f"{subject!r} is neither a principal (oidc:…, token:…) nor a group (group:<name>)",
            field="subject",
        )
    role = Role.parse(body.role)
    policy.ensure_can_grant(ctx, project_id, role)
    with db.write() as conn:
        return bindings.put(conn, project_id, subject, role, ctx.principal)


@router.delete("/projects/{project_id}/members/{subject:path}", status_code=status.HTTP_204_NO_CONTENT)
def delete_member(project_id: str, subject: Subject, ctx: Context, db: DB) -> Response:
    with db.write() as conn:
        bindings.remove(conn, project_id, subject)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
