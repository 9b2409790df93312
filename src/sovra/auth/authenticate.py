"""Turn a bearer credential into a request context.

Three kinds of credential are accepted, told apart by their shape:

* the bootstrap admin token from ``SOVRA_ADMIN_TOKEN`` (for automation that installs Sovra);
* API tokens (``sovra_…``), looked up by the SHA-256 of the secret;
* OIDC access tokens (JWTs) from a configured issuer, whose claims carry groups and project roles.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sovra import metrics
from sovra.auth import secrets
from sovra.auth.context import RequestContext
from sovra.domain.errors import Unauthenticated
from sovra.domain.identity import Identity, Role
from sovra.domain.ids import is_id
from sovra.domain.project import PROJECT_KIND
from sovra.store import bindings
from sovra.store import tokens as token_store
from sovra.store.database import Database
from sovra.store.schema import resources
from sovra.store.types import utcnow

BOOTSTRAP_PRINCIPAL = "bootstrap"


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Identity: ...


def _refused(reason: str, detail: str) -> Unauthenticated:
    metrics.AUTH_FAILURES.labels(reason).inc()
    return Unauthenticated(detail)


class Authenticator:
    def __init__(self, db: Database, bootstrap_token: str | None, oidc: TokenVerifier | None) -> None:
        self.db = db
        self.bootstrap_token = bootstrap_token
        self.oidc = oidc

    def authenticate(self, authorization: str, request_id: str, source: str) -> RequestContext:
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise _refused(
                "missing", "send 'Authorization: Bearer <token>' (`sovra login` stores one for the CLI)"
            )
        if self.bootstrap_token and hmac.compare_digest(credential.encode(), self.bootstrap_token.encode()):
            return RequestContext(BOOTSTRAP_PRINCIPAL, "bootstrap admin", True, {}, request_id, source)
        if secrets.looks_like_api_token(credential):
            return self._api_token(credential, request_id, source)
        if self.oidc is None:
            raise _refused("invalid", "the bearer token is not valid")
        try:
            identity = self.oidc.verify(credential)
        except Unauthenticated as exc:
            raise _refused("oidc", exc.detail) from exc
        return self._from_identity(identity, request_id, source)

    def _api_token(self, secret: str, request_id: str, source: str) -> RequestContext:
        now = utcnow()
        with self.db.read() as conn:
            token = token_store.find_by_hash(conn, secrets.secret_hash(secret))
        if token is None:
            raise _refused("invalid", "the bearer token is not valid")
        if token.revoked_at is not None:
            raise _refused("revoked", f"API token {token.name} ({token.id}) was revoked")
        if token.expires_at <= now:
            raise _refused(
                "expired",
                f"API token {token.name} ({token.id}) expired at {token.expires_at:%Y-%m-%d %H:%M}Z",
            )
        if token.last_used_at is None or now - token.last_used_at >= token_store.LAST_USED_PRECISION:
            with self.db.write() as conn:
                token_store.touch(conn, token, now)
        role = token.role_value
        roles = {token.project_id: role} if token.project_id is not None else {}
        return RequestContext(
            principal=f"token:{token.id}",
            display_name=f"token {token.name}",
            is_admin=role == Role.ADMIN and token.project_id is None,
            roles=roles,
            request_id=request_id,
            source=source,
            token_id=token.id,
        )

    def _from_identity(self, identity: Identity, request_id: str, source: str) -> RequestContext:
        with self.db.read() as conn:
            roles = bindings.roles_of(conn, identity.principal, identity.groups)
            for project_id, role in _resolve_project_refs(conn, identity.project_roles).items():
                roles[project_id] = max(roles.get(project_id, role), role)
        return RequestContext(
            principal=identity.principal,
            display_name=identity.display_name,
            is_admin=identity.is_admin,
            roles=roles,
            request_id=request_id,
            source=source,
        )


def _resolve_project_refs(conn: Connection, refs: Mapping[str, Role]) -> dict[str, Role]:
    """Project roles from the identity provider name projects by id or by name; map them to ids."""
    if not refs:
        return {}
    rows = conn.execute(
        sa.select(resources.c.id, resources.c.name).where(
            resources.c.kind == PROJECT_KIND,
            sa.or_(resources.c.id.in_([r for r in refs if is_id(r)]), resources.c.name.in_(list(refs))),
        )
    ).all()
    resolved: dict[str, Role] = {}
    for project_id, name in rows:
        role = max(refs.get(project_id, Role.READER), refs.get(name, Role.READER))
        resolved[project_id] = role
    return resolved
