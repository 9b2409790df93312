"""Who is calling and on behalf of which projects: resolved once per request.

Every handler receives a ``RequestContext``. Until identity and roles land, the only principal is
the configured admin token; the shape already carries a principal and the projects it may see so
that authorization can later be enforced in this one place.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from sovra.domain.errors import Unauthenticated
from sovra.domain.ids import new_id


@dataclass(frozen=True)
class RequestContext:
    principal: str
    is_admin: bool
    project_ids: tuple[str, ...] | None  # None: every project (admin)
    request_id: str
    source: str


def request_id_of(request: Request) -> str:
    supplied = request.headers.get("x-request-id", "")
    return supplied if 0 < len(supplied) <= 128 and supplied.isprintable() else new_id()


def authenticate(request: Request) -> RequestContext:
    """FastAPI dependency: check the bearer token and build the request context."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("send 'Authorization: Bearer <token>'; `sovra up` printed the admin token")
    expected = request.app.state.admin_token
    if expected is None or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthenticated("the bearer token is not valid")
    return RequestContext(
        principal="admin",
        is_admin=True,
        project_ids=None,
        request_id=getattr(request.state, "request_id", None) or request_id_of(request),
        source=request.client.host if request.client else "",
    )
