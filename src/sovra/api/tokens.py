"""/v1/.../tokens: API tokens for automation, shown once, stored hashed, expiring, revocable."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from sovra.api.deps import DB, Config, Context
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.auth import policy, secrets
from sovra.auth.context import RequestContext
from sovra.config import Settings
from sovra.domain.errors import InvalidArgument
from sovra.domain.identity import Role
from sovra.domain.names import validate_name
from sovra.store import tokens as token_store
from sovra.store.database import Database
from sovra.store.tokens import ApiToken
from sovra.store.types import utcnow

router = APIRouter(prefix="/v1", tags=["tokens"], responses=PROBLEM_RESPONSES)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    role: str = Field(max_length=16, description="reader, member or manager (admin for global tokens)")
    expires_in_days: int = Field(default=90, ge=1, le=3650, description="Lifetime; capped by the server.")


class CreatedToken(ApiToken):
    secret: str = Field(description="The bearer token. Shown only in this answer: store it now.")


class TokenList(BaseModel):
    items: list[ApiToken]


def _issue(
    db: Database, settings: Settings, ctx: RequestContext, body: TokenCreate, project_id: str | None
) -> CreatedToken:
    validate_name(body.name)
    role = Role.parse(body.role)
    policy.ensure_can_grant(ctx, project_id, role)
    if body.expires_in_days > settings.token_max_days:
        raise InvalidArgument(
            f"tokens live at most {settings.token_max_days} days here", field="expires_in_days"
        )
    secret = secrets.new_secret()
    expires: datetime = utcnow() + timedelta(days=body.expires_in_days)
    with db.write() as conn:
        token = token_store.create(
            conn,
            name=body.name,
            project_id=project_id,
            role=role,
            secret_hash=secrets.secret_hash(secret),
            hint=secrets.hint(secret),
            created_by=ctx.principal,
            expires_at=expires,
        )
    return CreatedToken(**token.model_dump(), secret=secret)


@router.post(
    "/projects/{project_id}/tokens", status_code=status.HTTP_201_CREATED, response_model=CreatedToken
)
def create_project_token(
    project_id: str, body: TokenCreate, ctx: Context, db: DB, settings: Config, response: Response
) -> CreatedToken:
    """A token for this project with a role no higher than the caller's own."""
    created = _issue(db, settings, ctx, body, project_id)
    response.headers["Location"] = f"/v1/tokens/{created.id}"
    return created


@router.post("/tokens", status_code=status.HTTP_201_CREATED, response_model=CreatedToken)
def create_admin_token(
    body: TokenCreate, ctx: Context, db: DB, settings: Config, response: Response
) -> CreatedToken:
    """A global token (admins only), e.g. for automation that manages every project."""
    created = _issue(db, settings, ctx, body, None)
    response.headers["Location"] = f"/v1/tokens/{created.id}"
    return created


@router.get("/projects/{project_id}/tokens", response_model=TokenList)
def list_project_tokens(project_id: str, ctx: Context, db: DB) -> TokenList:
    """Managers see every token of the project; others see the ones they created."""
    creator = None if policy.can_see_all_tokens(ctx, project_id) else ctx.principal
    with db.read() as conn:
        return TokenList(items=token_store.list_tokens(conn, project_id=project_id, created_by=creator))


@router.get("/tokens", response_model=TokenList)
def list_my_tokens(ctx: Context, db: DB) -> TokenList:
    """The tokens the caller created, in every project (admins: every token)."""
    with db.read() as conn:
        return TokenList(
            items=token_store.list_tokens(
                conn, created_by=None if ctx.is_admin else ctx.principal, any_project=True
            )
        )


@router.delete("/tokens/{token_id}", response_model=ApiToken)
def revoke_token(token_id: str, ctx: Context, db: DB) -> ApiToken:
    """Revoke at once; the record stays (with revoked_at) for the audit trail."""
    with db.write() as conn:
        return token_store.revoke(conn, token_id)
