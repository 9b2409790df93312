"""Shared FastAPI dependencies: the authorized request context, the database, parameter types."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from sovra import metrics
from sovra.api.audit_trail import AuditNote
from sovra.auth import policy
from sovra.auth.authenticate import Authenticator
from sovra.auth.context import RequestContext
from sovra.auth.ratelimit import RateLimiter
from sovra.config import Settings
from sovra.domain.errors import Forbidden, InvalidArgument, RateLimited, Unauthenticated
from sovra.domain.ids import new_id
from sovra.store.database import Database

NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"
TextFilter = Annotated[str | None, Query(max_length=256, pattern=NO_CONTROL_CHARACTERS)]
"""A free-text query filter (a name, a verb, an id): printable, never a control character."""
PageSize = Annotated[int, Query(ge=1, le=1000, description="Items per page (capped by the server).")]
PageToken = Annotated[str | None, Query(max_length=512, description="next_page_token of the previous page.")]
IfMatch = Annotated[str | None, Header(description="ETag of the version you read; 412 if it is stale.")]


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def request_id_of(request: Request) -> str:
    supplied = request.headers.get("x-request-id", "")
    return supplied if 0 < len(supplied) <= 128 and supplied.isprintable() else new_id()


def authorized_context(request: Request) -> RequestContext:
    """Authenticate, rate-limit and authorize the request against the route's policy rule."""
    route = request.scope.get("route")
    rule = policy.rule_for(request.method, getattr(route, "path", ""))
    if rule is None:  # fail closed; the app also refuses to start with a route that has no rule
        raise Forbidden("no access rule covers this route")
    ctx = _authenticate(request)
    note: AuditNote | None = getattr(request.state, "audit", None)
    if note is not None:
        note.principal = ctx.principal
    _rate_limit(request, ctx.principal)
    with request.app.state.db.read() as conn:
        target = policy.resolve(rule, request.path_params, conn)
    if note is not None and target is not None:
        note.project_id = target.project_id  # refused attempts are recorded in the project too
    policy.check(ctx, rule, target, request.path_params)
    return ctx


def _authenticate(request: Request) -> RequestContext:
    """Credentials to a context; failed attempts count against the source address's rate limit."""
    authenticator: Authenticator = request.app.state.authenticator
    source = request.client.host if request.client else ""
    try:
        return authenticator.authenticate(
            request.headers.get("authorization", ""),
            getattr(request.state, "request_id", None) or request_id_of(request),
            source,
        )
    except Unauthenticated:
        _rate_limit(request, f"address:{source}")
        raise


def _rate_limit(request: Request, key: str) -> None:
    limiter: RateLimiter = request.app.state.rate_limiter
    try:
        limiter.check(key)
    except RateLimited:
        metrics.RATE_LIMITED.inc()
        raise


Context = Annotated[RequestContext, Depends(authorized_context)]
DB = Annotated[Database, Depends(get_db)]
Config = Annotated[Settings, Depends(get_settings)]


def parse_if_match(value: str | None) -> int | None:
    """``"7"`` or ``W/"7"`` to 7; None when absent or ``*``."""
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 18:
        raise InvalidArgument(f"If-Match {value!r} is not an ETag this API issued", field="header:If-Match")
    return int(text)
