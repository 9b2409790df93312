"""OIDC bearer tokens through the real API: a test issuer, claims mapped to roles, group bindings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sovra.auth.oidc import OidcIssuerConfig, OidcVerifier
from tests.support.live_server import LiveServer, live_server
from tests.support.oidc_issuer import CLIENT_ID, LocalIssuer, running_issuer


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with running_issuer() as served:
        yield served


@pytest.fixture
def oidc_api(database_url: str, tmp_path: Path, issuer: LocalIssuer) -> Iterator[LiveServer]:
    config = OidcIssuerConfig(
        issuer=issuer.issuer,
        audience=CLIENT_ID,
        allow_insecure_http=True,
        accept_azp_as_audience=True,
        admin_roles=["sovra-admin"],
    )
    with (
        OidcVerifier([config]) as verifier,
        live_server(database_url, tmp_path / "data", oidc=verifier) as server,
    ):
        yield server


def _as(server: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_a_keycloak_user_gets_roles_from_claims_and_from_group_bindings(
    oidc_api: LiveServer, issuer: LocalIssuer
) -> None:
    with oidc_api.client() as admin:
        alpha = admin.post("/v1/projects", json={"name": "alpha"}).json()
        beta = admin.post("/v1/projects", json={"name": "beta"}).json()
        gamma = admin.post("/v1/projects", json={"name": "gamma"}).json()
        bound = admin.put(f"/v1/projects/{beta['id']}/members/group:/team-a", json={"role": "manager"})
        assert bound.status_code == 200, bound.text

    # the project-roles claim names alpha by name; the group /team-a is bound to beta
    token = issuer.mint(issuer.keycloak_claims(sovra_project_roles={"alpha": "member"}))
    with _as(oidc_api, token) as alice:
        me = alice.get("/v1/whoami").json()
        assert me["principal"] == f"oidc:{issuer.issuer}#user-alice" and me["display_name"] == "alice"
        assert me["roles"] == {alpha["id"]: "member", beta["id"]: "manager"} and not me["is_admin"]
        visible = [p["name"] for p in alice.get("/v1/projects").json()["items"]]
        assert visible == ["alpha", "beta"]
        assert alice.get(f"/v1/projects/{gamma['id']}").status_code == 404  # no existence leak
        assert alice.patch(f"/v1/projects/{alpha['id']}", json={"labels": {"a": "b"}}).status_code == 403
        assert alice.patch(f"/v1/projects/{beta['id']}", json={"labels": {"a": "b"}}).status_code == 200
        assert alice.post("/v1/projects", json={"name": "nope"}).status_code == 403

    with oidc_api.client() as admin:
        records = admin.get("/v1/audit", params={"resource_id": beta["id"]}).json()["items"]
    assert any(r["principal"] == me["principal"] and r["action"] == "update_project" for r in records)


def test_a_realm_admin_is_admin_and_bad_tokens_are_refused(oidc_api: LiveServer, issuer: LocalIssuer) -> None:
    admin_token = issuer.mint(issuer.keycloak_claims(realm_access={"roles": ["sovra-admin"]}))
    with _as(oidc_api, admin_token) as admin:
        assert admin.get("/v1/whoami").json()["is_admin"] is True
        assert admin.post("/v1/projects", json={"name": "made-by-oidc-admin"}).status_code == 201
    expired = issuer.mint(issuer.claims(lifetime=-120))
    wrong_audience = issuer.mint(issuer.claims(aud="someone-else"))
    for token, message in ((expired, "expired"), (wrong_audience, "audience")):
        with _as(oidc_api, token) as caller:
            response = caller.get("/v1/whoami")
        assert response.status_code == 401 and message in response.json()["detail"]
        assert token not in response.text
    metrics = httpx.get(f"{oidc_api.url}/metrics").text
    assert 'sovra_auth_failures_total{reason="oidc"}' in metrics
