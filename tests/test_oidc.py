"""OIDC token verification against a real issuer served on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from sovra.auth.oidc import OidcIssuerConfig, OidcVerifier
from sovra.domain.errors import Unauthenticated
from sovra.domain.identity import Identity, Role
from tests.support.oidc_issuer import CLIENT_ID, LocalIssuer, SigningKey, b64url_json, running_issuer


class FakeClock:
    """Monotonic time the test moves by hand, for the JWKS cache and refresh rate limit."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeVerifier = Callable[..., OidcVerifier]


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with running_issuer() as served:
        yield served


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_verifier(issuer: LocalIssuer, clock: FakeClock) -> Iterator[MakeVerifier]:
    """A verifier trusting ``issuer``; keyword arguments override its config."""
    made: list[OidcVerifier] = []

    def make(**overrides: Any) -> OidcVerifier:
        config = {"issuer": issuer.issuer, "audience": CLIENT_ID, "allow_insecure_http": True}
        config.update(overrides)
        verifier = OidcVerifier([OidcIssuerConfig(**config)], clock=clock, http_timeout=2.0)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        verifier.close()


@pytest.fixture
def verifier(make_verifier: MakeVerifier) -> OidcVerifier:
    return make_verifier(admin_roles=["sovra-admin"])


def refused(verifier: OidcVerifier, token: str, match: str) -> Unauthenticated:
    """Assert the token is refused with a 401 whose message matches and never echoes the token."""
    with pytest.raises(Unauthenticated, match=match) as caught:
        verifier.verify(token)
    assert caught.value.status == 401
    assert not token or token not in str(caught.value)
    if token.count(".") == 2 and len(token.split(".")[1]) > 8:
        assert token.split(".")[1] not in str(caught.value)
    return caught.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- valid tokens ---------------------------------------------------------------------------------


def test_rs256_token_maps_to_identity(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    claims = issuer.claims(groups=["team-a"], sovra_project_roles={"web": "member"})
    identity = verifier.verify(issuer.mint(claims, key=issuer.rsa))
    assert identity == Identity(
        principal=f"oidc:{issuer.issuer}#user-alice",
        display_name="alice",
        groups=("team-a",),
        project_roles={"web": Role.MEMBER},
        is_admin=False,
        source="oidc",
    )


def test_es256_token_accepted(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    identity = verifier.verify(issuer.mint(issuer.claims(sub="bob", preferred_username=None), key=issuer.ec))
    assert identity.principal == f"oidc:{issuer.issuer}#bob"
    assert identity.display_name == "bob"  # falls back to the subject


def test_custom_claim_names(issuer: LocalIssuer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(
        subject_claim="oid", name_claim="name", groups_claim="ext.teams", project_roles_claim="ext.projects"
    )
    claims = issuer.claims(oid="object-7", name="Carol", ext={"teams": ["blue"], "projects": ["web:reader"]})
    identity = verifier.verify(issuer.mint(claims))
    assert identity.principal == f"oidc:{issuer.issuer}#object-7"
    assert (identity.display_name, identity.groups) == ("Carol", ("blue",))
    assert identity.project_roles == {"web": Role.READER}


def test_missing_subject_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    refused(verifier, issuer.mint(issuer.claims(sub=None)), "'sub'")


# --- time -----------------------------------------------------------------------------------------


def test_expired_token_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    now = int(time.time())
    refused(verifier, issuer.mint(issuer.claims(iat=now - 600, exp=now - 60)), "expired")


def test_expired_within_leeway_accepted(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    now = int(time.time())
    assert verifier.verify(issuer.mint(issuer.claims(iat=now - 600, exp=now - 10))).display_name == "alice"


def test_leeway_is_configurable(issuer: LocalIssuer, make_verifier: MakeVerifier) -> None:
    now = int(time.time())
    refused(make_verifier(leeway_seconds=0), issuer.mint(issuer.claims(exp=now - 10)), "expired")


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid_refused(issuer: LocalIssuer, verifier: OidcVerifier, claim: str) -> None:
    refused(verifier, issuer.mint(issuer.claims(**{claim: int(time.time()) + 120})), "not yet valid")


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid_within_leeway_accepted(
    issuer: LocalIssuer, verifier: OidcVerifier, claim: str
) -> None:
    token = issuer.mint(issuer.claims(**{claim: int(time.time()) + 10}))
    assert verifier.verify(token).display_name == "alice"


def test_token_without_exp_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    refused(verifier, issuer.mint(issuer.claims(exp=None)), "'exp'")


# --- audience and issuer --------------------------------------------------------------------------


def test_wrong_audience_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    refused(verifier, issuer.mint(issuer.claims(aud="some-other-app")), "audience")
    refused(verifier, issuer.mint(issuer.claims(aud=None)), "audience")


def test_audience_list_with_ours_accepted(issuer: LocalIssuer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(audience=["sovra-cli", "sovra"])
    assert verifier.verify(issuer.mint(issuer.claims(aud=["account", "sovra"]))).display_name == "alice"


def test_azp_counts_as_audience_only_when_enabled(issuer: LocalIssuer, make_verifier: MakeVerifier) -> None:
    token = issuer.mint(issuer.keycloak_claims())  # aud "account", azp "sovra"
    refused(make_verifier(), token, "audience")
    assert make_verifier(accept_azp_as_audience=True).verify(token).display_name == "alice"
    other_client = issuer.mint(issuer.keycloak_claims(azp="other-app"))
    refused(make_verifier(accept_azp_as_audience=True), other_client, "audience")


def test_unknown_issuer_refused_without_contacting_anyone(
    issuer: LocalIssuer, verifier: OidcVerifier
) -> None:
    refused(
        verifier, issuer.mint(issuer.claims(iss="https://evil.example/realms/sovra")), "issuer is not trusted"
    )
    refused(verifier, issuer.mint(issuer.claims(iss=None)), "issuer is not trusted")
    assert issuer.requests.total() == 0


def test_issuer_cannot_speak_for_another_trusted_issuer(clock: FakeClock) -> None:
    with running_issuer() as first, running_issuer() as second:
        configs = [
            OidcIssuerConfig(issuer=i.issuer, audience=CLIENT_ID, allow_insecure_http=True)
            for i in (first, second)
        ]
        with OidcVerifier(configs, clock=clock) as verifier:
            assert verifier.verify(first.mint()).principal.startswith(f"oidc:{first.issuer}#")
            # Signed by the first issuer, claiming to be the second: the second's keys must verify it.
            forged = first.mint(first.claims(iss=second.issuer))
            refused(verifier, forged, "key the issuer does not publish")
            forged = first.mint(first.claims(iss=second.issuer), headers={"kid": second.rsa.kid})
            refused(verifier, forged, "signature is invalid")


# --- algorithms -----------------------------------------------------------------------------------


def test_alg_none_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    for alg in ("none", "None", "NONE"):
        token = issuer.mint_unsigned(issuer.claims(), {"alg": alg, "typ": "JWT", "kid": issuer.rsa.kid})
        refused(verifier, token, "algorithm is not allowed")


def test_hs256_signed_with_the_issuers_public_key_refused(
    issuer: LocalIssuer, verifier: OidcVerifier
) -> None:
    verifier.verify(issuer.mint())  # the verifier knows the RSA key
    pem = issuer.rsa.public_pem()
    refused(verifier, issuer.mint_hmac(issuer.claims(), pem, kid=issuer.rsa.kid), "algorithm is not allowed")
    refused(verifier, issuer.mint_hmac(issuer.claims(), pem), "algorithm is not allowed")


def test_algorithm_outside_issuer_allow_list_refused(
    issuer: LocalIssuer, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier(algorithms=["ES256"])
    assert verifier.verify(issuer.mint(key=issuer.ec)).display_name == "alice"
    refused(verifier, issuer.mint(key=issuer.rsa), "algorithm is not allowed")


def test_header_alg_must_match_the_keys_type(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    # An RS256 token whose kid names the EC key: the EC key is never used as an RSA key.
    token = issuer.mint(key=issuer.rsa, headers={"kid": issuer.ec.kid})
    refused(verifier, token, "does not match the issuer's key")


@pytest.mark.parametrize("alg", ["HS256", "HS512", "none", "RS1", ""])
def test_config_refuses_symmetric_and_unknown_algorithms(alg: str) -> None:
    with pytest.raises(ValidationError, match="only asymmetric algorithms"):
        OidcIssuerConfig(issuer="https://id.example/realms/x", audience="sovra", algorithms=["RS256", alg])


def test_config_refuses_empty_algorithms_and_audience() -> None:
    with pytest.raises(ValidationError, match="at least one algorithm"):
        OidcIssuerConfig(issuer="https://id.example", audience="sovra", algorithms=[])
    with pytest.raises(ValidationError, match="at least one non-empty client id"):
        OidcIssuerConfig(issuer="https://id.example", audience=[])


# --- keys: cache, refresh, rotation ---------------------------------------------------------------


def test_jwks_is_cached(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    for _ in range(5):
        verifier.verify(issuer.mint(key=issuer.rsa))
        verifier.verify(issuer.mint(key=issuer.ec))
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 1)


def test_jwks_refetched_after_cache_lifetime(
    issuer: LocalIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    verifier.verify(issuer.mint())
    clock.advance(301)
    verifier.verify(issuer.mint())
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 2)


def test_configured_jwks_uri_skips_discovery(issuer: LocalIssuer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(jwks_uri=issuer.jwks_uri)
    verifier.verify(issuer.mint())
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (0, 1)


def test_unknown_kid_refreshes_once_then_refused(
    issuer: LocalIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    verifier.verify(issuer.mint())
    assert issuer.jwks_fetches == 1
    stranger = SigningKey.generate("RS256")
    clock.advance(31)
    refused(verifier, issuer.mint(key=stranger), "key the issuer does not publish")
    assert issuer.jwks_fetches == 2  # it looked again before refusing
    # Within the rate limit further unknown kids do not make it fetch again.
    for _ in range(3):
        refused(verifier, issuer.mint(key=SigningKey.generate("ES256")), "key the issuer does not publish")
    assert issuer.jwks_fetches == 2
    clock.advance(31)
    refused(verifier, issuer.mint(key=stranger), "key the issuer does not publish")
    assert issuer.jwks_fetches == 3


def test_token_without_kid_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    token = issuer.mint(headers={"kid": None})
    assert "kid" not in json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    refused(verifier, token, "no key id")


def test_key_rotation(issuer: LocalIssuer, verifier: OidcVerifier, clock: FakeClock) -> None:
    old = issuer.rsa
    old_token = issuer.mint(key=old)
    assert verifier.verify(old_token).display_name == "alice"
    new = issuer.rotate(old)
    clock.advance(31)
    assert verifier.verify(issuer.mint(key=new)).display_name == "alice"
    assert issuer.jwks_fetches == 2  # the new kid triggered the refresh
    refused(verifier, old_token, "key the issuer does not publish")
    refused(verifier, issuer.mint(key=old), "key the issuer does not publish")
    assert verifier.verify(issuer.mint(key=issuer.ec)).display_name == "alice"  # untouched key still works


def test_rotated_in_key_waits_for_the_rate_limit(
    issuer: LocalIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    verifier.verify(issuer.mint())
    new = issuer.add_key("ES256")
    refused(verifier, issuer.mint(key=new), "key the issuer does not publish")
    assert issuer.jwks_fetches == 1
    clock.advance(30)
    assert verifier.verify(issuer.mint(key=new)).display_name == "alice"
    assert issuer.jwks_fetches == 2


def test_concurrent_first_use_fetches_once(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    tokens = [issuer.mint(issuer.claims(sub=f"user-{i}")) for i in range(16)]
    results: list[Identity | BaseException] = []
    barrier = threading.Barrier(len(tokens))

    def work(token: str) -> None:
        barrier.wait()
        try:
            results.append(verifier.verify(token))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(isinstance(r, Identity) for r in results), results
    assert len(results) == 16
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 1)


def test_encryption_keys_in_jwks_are_not_used_for_signatures(
    issuer: LocalIssuer, verifier: OidcVerifier
) -> None:
    enc_key = SigningKey.generate("RS256")
    issuer.extra_jwks.append({**enc_key.public_jwk(), "use": "enc", "alg": "RSA-OAEP"})
    refused(verifier, issuer.mint(key=enc_key), "key the issuer does not publish")


# --- forged and malformed tokens ------------------------------------------------------------------


def test_tampered_payload_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    header, _, signature = issuer.mint().split(".")
    payload = b64url_json(issuer.claims(sub="admin", sovra_project_roles={"web": "manager"}))
    refused(verifier, f"{header}.{payload}.{signature}", "signature is invalid")


def test_attacker_key_with_real_kid_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    attacker = SigningKey.generate("RS256")
    # The attacker reuses the real kid and even embeds its own public key in the header.
    token = issuer.mint(
        key=attacker, headers={"kid": issuer.rsa.kid, "jwk": attacker.public_jwk(), "jku": "http://evil/"}
    )
    refused(verifier, token, "signature is invalid")
    assert issuer.requests.total() == 2  # discovery and JWKS only; jku was never followed


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "only.two",
        "a.b.c.d",
        "!!!.???.***",
        f"{b64url_json({'alg': 'RS256'})}.not-json.sig",
        "eyJhbGciOiJSUzI1NiJ9.W10.c2ln",  # payload is a JSON array
    ],
)
def test_malformed_tokens_refused(issuer: LocalIssuer, verifier: OidcVerifier, token: str) -> None:
    refused(verifier, token, "not a signed JWT|malformed")
    assert issuer.requests.total() == 0


def test_empty_and_oversized_tokens_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    refused(verifier, "", "missing")
    big = issuer.mint(issuer.claims(padding="x" * 20_000))
    refused(verifier, big, "too large")


def test_truncated_signature_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    token = issuer.mint()
    refused(verifier, token[:-10], "signature is invalid|malformed")
    refused(verifier, token.rsplit(".", 1)[0] + ".", "signature is invalid|malformed")


# --- Keycloak claim mapping -----------------------------------------------------------------------


@pytest.fixture
def keycloak(make_verifier: MakeVerifier) -> OidcVerifier:
    return make_verifier(admin_roles=["sovra-admin"], accept_azp_as_audience=True)


def test_keycloak_realm_admin_role(issuer: LocalIssuer, keycloak: OidcVerifier) -> None:
    plain = keycloak.verify(issuer.mint(issuer.keycloak_claims()))
    assert plain.is_admin is False
    assert plain.groups == ("/team-a", "/team-a/ops")
    claims = issuer.keycloak_claims(realm_access={"roles": ["default-roles-sovra", "sovra-admin"]})
    assert keycloak.verify(issuer.mint(claims)).is_admin is True


def test_keycloak_client_role_of_our_client_only(issuer: LocalIssuer, keycloak: OidcVerifier) -> None:
    ours = issuer.keycloak_claims(resource_access={CLIENT_ID: {"roles": ["sovra-admin"]}})
    assert keycloak.verify(issuer.mint(ours)).is_admin is True
    theirs = issuer.keycloak_claims(resource_access={"grafana": {"roles": ["sovra-admin"]}})
    assert keycloak.verify(issuer.mint(theirs)).is_admin is False


def test_client_ids_with_dots_work_in_role_paths(issuer: LocalIssuer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(audience="sovra.example.org", admin_roles=["admin"])
    claims = issuer.claims(
        aud="sovra.example.org", resource_access={"sovra.example.org": {"roles": ["admin"]}}
    )
    assert verifier.verify(issuer.mint(claims)).is_admin is True


def test_admin_roles_empty_means_no_admin(issuer: LocalIssuer, make_verifier: MakeVerifier) -> None:
    claims = issuer.claims(realm_access={"roles": ["sovra-admin", "admin"]})
    assert make_verifier().verify(issuer.mint(claims)).is_admin is False


def test_project_roles_dict_form(issuer: LocalIssuer, keycloak: OidcVerifier) -> None:
    claims = issuer.keycloak_claims(sovra_project_roles={"web": "manager", "db": "Reader"})
    assert keycloak.verify(issuer.mint(claims)).project_roles == {"web": Role.MANAGER, "db": Role.READER}


def test_project_roles_list_form(issuer: LocalIssuer, keycloak: OidcVerifier) -> None:
    claims = issuer.keycloak_claims(sovra_project_roles=["web:member", "db:reader", "web:manager"])
    # A project listed twice gets the higher role.
    assert keycloak.verify(issuer.mint(claims)).project_roles == {"web": Role.MANAGER, "db": Role.READER}


def test_project_roles_at_a_nested_path(issuer: LocalIssuer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(project_roles_claim="sovra.projects")
    claims = issuer.claims(sovra={"projects": {"prj_01": "member"}})
    assert verifier.verify(issuer.mint(claims)).project_roles == {"prj_01": Role.MEMBER}


def test_unknown_project_roles_ignored_with_warning(
    issuer: LocalIssuer, keycloak: OidcVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    claims = issuer.keycloak_claims(
        sovra_project_roles=["web:member", "db:owner", "nocolon", "ops:admin", 7, ":reader"]
    )
    token = issuer.mint(claims)
    with caplog.at_level(logging.WARNING, logger="sovra.auth.oidc"):
        identity = keycloak.verify(token)
    assert identity.project_roles == {"web": Role.MEMBER}
    assert identity.is_admin is False  # "admin" for a project does not make a global admin
    assert "'owner'" in caplog.text
    assert "global" in caplog.text
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


def test_project_roles_of_wrong_shape_ignored(issuer: LocalIssuer, keycloak: OidcVerifier) -> None:
    token = issuer.mint(issuer.keycloak_claims(sovra_project_roles="web:member"))
    assert keycloak.verify(token).project_roles == {}


# --- provider availability and transport ----------------------------------------------------------


def test_issuer_unreachable(clock: FakeClock) -> None:
    with running_issuer() as issuer:
        token = issuer.mint()
    # The server is gone: nothing listens on its port any more.
    config = OidcIssuerConfig(issuer=issuer.issuer, audience=CLIENT_ID, allow_insecure_http=True)
    with OidcVerifier([config], clock=clock, http_timeout=2.0) as verifier:
        error = refused(verifier, token, "identity provider unreachable")
        assert error.status == 401


def test_nothing_listening(clock: FakeClock) -> None:
    issuer_url = f"http://127.0.0.1:{free_port()}/realms/x"
    config = OidcIssuerConfig(issuer=issuer_url, audience=CLIENT_ID, allow_insecure_http=True)
    with running_issuer() as issuer, OidcVerifier([config], clock=clock) as verifier:
        refused(verifier, issuer.mint(issuer.claims(iss=issuer_url)), "identity provider unreachable")


@pytest.mark.parametrize("status", [500, 503, 404])
def test_provider_errors_are_unreachable(issuer: LocalIssuer, verifier: OidcVerifier, status: int) -> None:
    issuer.outage_status = status
    refused(verifier, issuer.mint(), "identity provider unreachable")
    assert issuer.discovery_fetches == 1


def test_jwks_failure_after_discovery_is_unreachable(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    issuer.discovery_overrides["jwks_uri"] = issuer.issuer + "/no-such-certs"
    refused(verifier, issuer.mint(), "identity provider unreachable")


def test_cached_keys_survive_an_outage(issuer: LocalIssuer, verifier: OidcVerifier, clock: FakeClock) -> None:
    verifier.verify(issuer.mint())
    issuer.outage_status = 503
    clock.advance(301)  # past the cache lifetime: it tries to refresh, fails, keeps the old keys
    assert verifier.verify(issuer.mint()).display_name == "alice"
    assert issuer.jwks_fetches == 2
    # A key it has never seen cannot be checked while the provider is down.
    clock.advance(31)
    refused(verifier, issuer.mint(key=issuer.add_key("RS256")), "identity provider unreachable")
    # Once the provider is back the new key is picked up.
    issuer.outage_status = None
    clock.advance(31)
    assert verifier.verify(issuer.mint(key=issuer.add_key("ES256"))).display_name == "alice"


def test_cached_keys_expire_after_max_staleness(
    issuer: LocalIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    verifier.verify(issuer.mint())
    issuer.outage_status = 503
    clock.advance(300 + 3600 + 1)
    refused(verifier, issuer.mint(), "identity provider unreachable")


def test_first_fetch_failure_is_retried_after_the_interval(
    issuer: LocalIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    issuer.outage_status = 503
    refused(verifier, issuer.mint(), "unreachable")
    issuer.outage_status = None
    refused(verifier, issuer.mint(), "unreachable")  # rate-limited: no new attempt yet
    assert issuer.discovery_fetches == 1
    clock.advance(30)
    assert verifier.verify(issuer.mint()).display_name == "alice"


def test_discovery_naming_another_issuer_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    issuer.discovery_overrides["issuer"] = "https://evil.example/realms/sovra"
    refused(verifier, issuer.mint(), "identity provider unreachable")
    assert issuer.jwks_fetches == 0


def test_discovered_insecure_jwks_uri_refused(issuer: LocalIssuer, verifier: OidcVerifier) -> None:
    issuer.discovery_overrides["jwks_uri"] = "http://keys.example.com/certs"
    refused(verifier, issuer.mint(), "identity provider unreachable")


@pytest.mark.parametrize(
    ("url", "allow", "ok"),
    [
        ("https://id.example.com/realms/x", False, True),
        ("https://id.example.com/realms/x", True, True),
        ("http://id.example.com/realms/x", False, False),
        ("http://id.example.com/realms/x", True, False),
        ("http://10.0.0.5/realms/x", True, False),
        ("http://127.0.0.1:8080/realms/x", False, False),
        ("http://127.0.0.1:8080/realms/x", True, True),
        ("http://localhost:8080/realms/x", True, True),
        ("http://[::1]:8080/realms/x", True, True),
        ("ftp://127.0.0.1/x", True, False),
        ("id.example.com", False, False),
    ],
)
def test_http_issuer_only_on_loopback_when_allowed(url: str, allow: bool, ok: bool) -> None:
    def build() -> OidcIssuerConfig:
        return OidcIssuerConfig(issuer=url, audience="sovra", allow_insecure_http=allow)

    if ok:
        assert build().issuer == url
    else:
        with pytest.raises(ValidationError):
            build()


def test_insecure_jwks_uri_in_config_refused() -> None:
    with pytest.raises(ValidationError, match="plain http"):
        OidcIssuerConfig(issuer="https://id.example", audience="sovra", jwks_uri="http://id.example/certs")


def test_duplicate_issuers_refused() -> None:
    config = OidcIssuerConfig(issuer="https://id.example", audience="sovra")
    with pytest.raises(ValueError, match="twice"):
        OidcVerifier([config, config])


# --- configuration from the environment -----------------------------------------------------------


def test_issuers_parse_from_json_env(monkeypatch: pytest.MonkeyPatch) -> None:
    class OidcSettings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="SOVRA_", extra="ignore")
        oidc_issuers: list[OidcIssuerConfig] = []

    value = [
        {
            "issuer": "https://kc.example/realms/sovra",
            "audience": "sovra",
            "accept_azp_as_audience": True,
            "admin_roles": ["sovra-admin"],
        }
    ]
    monkeypatch.setenv("SOVRA_OIDC_ISSUERS", json.dumps(value))
    (parsed,) = OidcSettings().oidc_issuers
    assert parsed.audiences == ("sovra",)
    assert parsed.algorithms == ["RS256", "ES256"]
    assert parsed.role_claims == ["realm_access.roles", "resource_access.{client}.roles"]
    assert parsed.discovery_url == "https://kc.example/realms/sovra/.well-known/openid-configuration"
    with pytest.raises(ValidationError, match="extra"):
        TypeAdapter(list[OidcIssuerConfig]).validate_python([{**value[0], "audiance": "typo"}])
