"""Principals for the access tests: projects, API tokens of each role, a stand-in OIDC verifier.

Tokens carry exactly their own role in their own project, so "reader of project A" is simply an
API token with role ``reader`` in A. OIDC principals (which role bindings apply to) come from
``StaticVerifier``: a verifier that knows a fixed set of bearer strings.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from sovra.auth import secrets
from sovra.domain.edges import Edge, EdgeType
from sovra.domain.errors import Unauthenticated
from sovra.domain.identity import Identity, Role
from sovra.store import graph
from sovra.store import operations as operation_store
from sovra.store import resources as resource_store
from sovra.store import tokens as token_store
from sovra.store.database import Database
from sovra.store.types import utcnow

PROBLEM = "application/problem+json"
_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """A name nobody used yet in this test process (names are unique per kind)."""
    return f"{prefix}-{next(_counter)}"


def bearer(secret: str | None) -> dict[str, str]:
    return {} if secret is None else {"Authorization": f"Bearer {secret}"}


def http_client(base_url: str, secret: str | None = None) -> httpx.Client:
    """A client for the plain-HTTP test server; ``verify=False`` spares loading the CA bundle
    (~80 ms per client), which adds up over the hundreds of clients these tests make."""
    return httpx.Client(base_url=base_url, headers=bearer(secret), timeout=30, verify=False)


@dataclass(frozen=True)
class Principal:
    """A caller: ``secret`` is its bearer credential (None: no Authorization header at all)."""

    name: str
    secret: str | None
    principal: str | None = None  # as the audit trail and whoami name it
    token_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.secret)


def create_project(client: httpx.Client, name: str | None = None) -> str:
    response = client.post("/v1/projects", json={"name": name or unique("p")})
    assert response.status_code == 201, response.text
    project_id: str = response.json()["id"]
    return project_id


def issue_token(client: httpx.Client, project_id: str, role: str, name: str | None = None) -> dict[str, Any]:
    """POST /v1/projects/{id}/tokens with ``client``'s credential; the answer (with the secret)."""
    response = client.post(
        f"/v1/projects/{project_id}/tokens", json={"name": name or unique("t"), "role": role}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def token_principal(client: httpx.Client, project_id: str, role: str, name: str) -> Principal:
    created = issue_token(client, project_id, role, name)
    return Principal(name, created["secret"], f"token:{created['id']}", created["id"])


def store_token(
    db: Database, project_id: str | None, role: Role, created_by: str = "bootstrap", days: int = 30
) -> Principal:
    """An API token written straight into the store (no API call, so no rate-limit budget spent)."""
    secret = secrets.new_secret()
    with db.write() as conn:
        token = token_store.create(
            conn,
            name=unique("stored"),
            project_id=project_id,
            role=role,
            secret_hash=secrets.secret_hash(secret),
            hint=secrets.hint(secret),
            created_by=created_by,
            expires_at=utcnow() + timedelta(days=days),
        )
    return Principal(token.name, secret, f"token:{token.id}", token.id)


def store_project(db: Database, name: str | None = None) -> str:
    with db.write() as conn:
        return resource_store.create(
            conn,
            kind="Project",
            name=name or unique("p"),
            project_id=None,
            labels={},
            spec={},
            state="ACTIVE",
        ).id


def store_resource(db: Database, project_id: str | None, kind: str = "Widget") -> str:
    """A resource of ``project_id`` (owned by it through an ``owns`` edge), straight into the store."""
    with db.write() as conn:
        return resource_store.create(
            conn,
            kind=kind,
            name=unique(kind.lower()),
            project_id=project_id,
            labels={},
            spec={},
            state="ACTIVE",
        ).id


def store_edge(db: Database, source_id: str, edge_type: EdgeType, target_id: str) -> None:
    with db.write() as conn:
        graph.add(conn, Edge(source_id=source_id, target_id=target_id, type=edge_type))


def store_pending_operation(db: Database, project_id: str, verb: str = "test.unhandled") -> str:
    """An operation no worker claims (no handler has its verb): it stays PENDING."""
    with db.write() as conn:
        operation, _ = operation_store.create(conn, verb=verb, principal="bootstrap", project_id=project_id)
    return operation.id


@dataclass
class StaticVerifier:
    """A ``TokenVerifier`` that accepts a fixed set of bearer strings, each naming an identity."""

    identities: Mapping[str, Identity] = field(default_factory=dict)

    def verify(self, token: str) -> Identity:
        try:
            return self.identities[token]
        except KeyError:
            raise Unauthenticated("unknown test credential") from None


_METRIC = re.compile(r'^sovra_auth_failures_total\{reason="([a-z]+)"\} ([0-9.e+]+)$', re.MULTILINE)


def auth_failures(base_url: str) -> dict[str, float]:
    """``sovra_auth_failures_total`` by reason, as /metrics shows it now."""
    with http_client(base_url) as client:
        text = client.get("/metrics").text
    return {reason: float(value) for reason, value in _METRIC.findall(text)}
