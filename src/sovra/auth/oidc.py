"""OIDC bearer tokens: verify a JWT from a trusted issuer and turn its claims into an ``Identity``.

Every refusal raises ``Unauthenticated`` (401) with a short message that never repeats the token.
Only asymmetric algorithms are accepted, chosen per issuer in configuration, so a token cannot pick
its own verification rules (``alg: none``, or HMAC keyed with the issuer's public key).

The signing keys come from the issuer's JWKS, found through OIDC discovery unless configured. They
are cached; an unknown ``kid`` triggers one rate-limited refresh (keys rotate), and a cached key set
stays usable for a while when the provider is down, so a short outage does not log everyone out.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import jwt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sovra.domain.errors import InvalidArgument, Unauthenticated
from sovra.domain.identity import Identity, Role

log = logging.getLogger(__name__)

#: Algorithms that verify with a public key only. HMAC (HS*) and "none" are deliberately absent.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_TOKEN_BYTES = 16 * 1024
MAX_DOCUMENT_BYTES = 512 * 1024
LOOPBACK_NAMES = frozenset({"localhost"})

UNREACHABLE = "identity provider unreachable: its signing keys could not be fetched"


class OidcIssuerConfig(BaseModel):
    """One trusted identity provider and how its claims map onto Sovra roles.

    Meant to sit in ``Settings`` as ``oidc_issuers: list[OidcIssuerConfig]`` (JSON in
    ``SOVRA_OIDC_ISSUERS``); unknown keys are rejected so a typo does not silently weaken checks.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(description="Exactly the `iss` the provider puts in its tokens.")
    audience: str | list[str] = Field(description="Sovra's client id(s); `aud` must contain one.")
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256"],
        description="Allowed signature algorithms; asymmetric only.",
    )
    jwks_uri: str | None = Field(default=None, description="Skips discovery when set.")
    subject_claim: str = "sub"
    name_claim: str = "preferred_username"
    groups_claim: str = "groups"
    project_roles_claim: str = Field(
        default="sovra_project_roles",
        description='Dotted path; {"project": "role"} or ["project:role", ...].',
    )
    admin_roles: list[str] = Field(
        default_factory=list, description="Role names (found under role_claims) that mean global admin."
    )
    role_claims: list[str] = Field(
        default_factory=lambda: ["realm_access.roles", "resource_access.{client}.roles"],
        description="Dotted paths of role lists; {client} stands for each configured audience.",
    )
    leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    accept_azp_as_audience: bool = Field(
        default=False, description="Accept `azp` naming our client when `aud` does not (Keycloak)."
    )
    allow_insecure_http: bool = Field(
        default=False, description="Permit http:// for a loopback issuer (tests, local development)."
    )

    @field_validator("issuer")
    @classmethod
    def _issuer_is_absolute(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("issuer must be an absolute https:// URL")
        return value

    @field_validator("audience")
    @classmethod
    def _audience_not_empty(cls, value: str | list[str]) -> str | list[str]:
        values = [value] if isinstance(value, str) else value
        if not values or not all(v.strip() for v in values):
            raise ValueError("audience must name at least one non-empty client id")
        return value

    @field_validator("algorithms")
    @classmethod
    def _only_asymmetric(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("algorithms must allow at least one algorithm")
        for name in value:
            if name not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(
                    f"algorithm {name!r} is not allowed: only asymmetric algorithms "
                    f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}) may be configured; "
                    "HMAC and 'none' would let anyone who knows the key material forge tokens"
                )
        return value

    @model_validator(mode="after")
    def _transport_is_secure(self) -> Self:
        check_url(self.issuer, self.allow_insecure_http)
        if self.jwks_uri is not None:
            check_url(self.jwks_uri, self.allow_insecure_http)
        return self

    @property
    def audiences(self) -> tuple[str, ...]:
        return (self.audience,) if isinstance(self.audience, str) else tuple(self.audience)

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + DISCOVERY_PATH


def check_url(url: str, allow_insecure_http: bool) -> None:
    """Keys must arrive over TLS; plain HTTP only to this machine, and only when asked for."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute https:// URL")
    if not allow_insecure_http:
        raise ValueError(f"{url!r} uses plain http; set allow_insecure_http for a loopback issuer")
    if not _is_loopback(parts.hostname):
        raise ValueError(f"{url!r}: allow_insecure_http only applies to 127.0.0.1, ::1 or localhost")


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ProviderError(Exception):
    """The discovery document or JWKS could not be fetched or made no sense (detail is for logs)."""


@dataclass(frozen=True)
class KeySet:
    """One fetched JWKS, already parsed per (kid, algorithm); immutable so readers need no lock."""

    keys: Mapping[tuple[str | None, str], jwt.PyJWK]
    kids: frozenset[str | None]
    fetched_at: float


@dataclass
class _IssuerState:
    """Per-issuer cache. ``fetch_lock`` serialises fetches; ``key_set`` is swapped atomically."""

    config: OidcIssuerConfig
    fetch_lock: threading.Lock = field(default_factory=threading.Lock)
    key_set: KeySet | None = None
    jwks_uri: str | None = None
    last_attempt: float | None = None
    last_failed: bool = False


class OidcVerifier:
    """Verifies bearer tokens from the configured issuers. Thread-safe; build one per process.

    ``cache_seconds``: how long a fetched JWKS is used before one request refreshes it (others go on).
    ``refresh_interval``: minimum time between two fetch attempts per issuer, so tokens with made-up
    ``kid`` values cannot make Sovra hammer the provider. ``max_stale_seconds``: how long past
    ``cache_seconds`` a key set may still be used while the provider cannot be reached.
    """

    def __init__(
        self,
        issuers: Sequence[OidcIssuerConfig],
        http: httpx.Client | None = None,
        *,
        cache_seconds: float = 300.0,
        refresh_interval: float = 30.0,
        max_stale_seconds: float = 3600.0,
        http_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._states: dict[str, _IssuerState] = {}
        for config in issuers:
            if config.issuer in self._states:
                raise ValueError(f"issuer {config.issuer!r} is configured twice")
            self._states[config.issuer] = _IssuerState(config)
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=http_timeout, follow_redirects=False)
        self._cache_seconds = cache_seconds
        self._refresh_interval = refresh_interval
        self._max_stale = max_stale_seconds
        self._lock_timeout = 3 * http_timeout + 1
        self._clock = clock

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._states)

    def verify(self, token: str) -> Identity:
        """The identity a valid token carries; ``Unauthenticated`` for anything else."""
        header, unverified = _peek(token)
        state = self._state_for(unverified)
        config = state.config
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in config.algorithms:
            raise Unauthenticated("token signature algorithm is not allowed for this issuer")
        kid = header.get("kid")
        key = self._signing_key(state, kid if isinstance(kid, str) else None, alg)
        claims = _decode(token, key, alg, config)
        _check_audience(claims, config)
        return map_claims(claims, config)

    def _state_for(self, unverified: Mapping[str, Any]) -> _IssuerState:
        issuer = unverified.get("iss")
        state = self._states.get(issuer) if isinstance(issuer, str) else None
        if state is None:
            raise Unauthenticated("token issuer is not trusted")
        return state

    # --- keys -------------------------------------------------------------------------------------

    def _signing_key(self, state: _IssuerState, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key for ``kid``, refreshing the JWKS once if it is unknown (keys rotate)."""
        key_set = self._key_set(state, kid)
        if key_set is None:
            raise Unauthenticated(UNREACHABLE)
        if kid not in key_set.kids:
            if kid is None:
                raise Unauthenticated("token has no key id ('kid') and the issuer has no key without one")
            if state.last_failed:
                raise Unauthenticated(UNREACHABLE)
            raise Unauthenticated("token is signed with a key the issuer does not publish")
        key = key_set.keys.get((kid, alg))
        if key is None:
            raise Unauthenticated("token signature algorithm does not match the issuer's key")
        return key

    def _key_set(self, state: _IssuerState, kid: str | None) -> KeySet | None:
        """A usable key set, fetching when missing, lacking ``kid`` or past ``cache_seconds``.

        Threads that merely want a routine refresh do not wait for one already running; threads
        that cannot proceed without new keys wait for it, then look again before fetching.
        """
        current = self._usable(state.key_set)
        if current is not None and kid in current.kids and not self._expired(current):
            return current
        must_wait = current is None or kid not in current.kids
        acquired = state.fetch_lock.acquire(timeout=self._lock_timeout if must_wait else 0)
        if not acquired:
            return current
        try:
            current = self._usable(state.key_set)
            if current is not None and kid in current.kids and not self._expired(current):
                return current
            if self._may_attempt(state):
                self._refresh(state)
            return self._usable(state.key_set)
        finally:
            state.fetch_lock.release()

    def _usable(self, key_set: KeySet | None) -> KeySet | None:
        if key_set is None:
            return None
        if self._clock() - key_set.fetched_at > self._cache_seconds + self._max_stale:
            return None
        return key_set

    def _expired(self, key_set: KeySet) -> bool:
        return self._clock() - key_set.fetched_at > self._cache_seconds

    def _may_attempt(self, state: _IssuerState) -> bool:
        last = state.last_attempt
        return last is None or self._clock() - last >= self._refresh_interval

    def _refresh(self, state: _IssuerState) -> None:
        """Fetch the JWKS (discovering its URL first if needed); keep the old set on failure."""
        state.last_attempt = self._clock()
        try:
            jwks_uri = self._jwks_uri(state)
            document = self._get_json(jwks_uri)
            state.key_set = parse_jwks(document, state.config.algorithms, self._clock())
        except ProviderError as exc:
            state.last_failed = True
            state.jwks_uri = None  # rediscover next time, in case the provider moved its keys
            log.warning("OIDC issuer %s: cannot refresh signing keys: %s", state.config.issuer, exc)
        else:
            state.last_failed = False
            log.info(
                "OIDC issuer %s: fetched %d signing key(s)", state.config.issuer, len(state.key_set.kids)
            )

    def _jwks_uri(self, state: _IssuerState) -> str:
        config = state.config
        if config.jwks_uri is not None:
            return config.jwks_uri
        if state.jwks_uri is None:
            state.jwks_uri = self._discover(config)
        return state.jwks_uri

    def _discover(self, config: OidcIssuerConfig) -> str:
        """The JWKS URL from the discovery document, which must name the same issuer (OIDC §4.3)."""
        document = self._get_json(config.discovery_url)
        if document.get("issuer") != config.issuer:
            raise ProviderError("discovery document names a different issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ProviderError("discovery document has no jwks_uri")
        try:
            check_url(jwks_uri, config.allow_insecure_http)
        except ValueError as exc:
            raise ProviderError(f"discovered jwks_uri refused: {exc}") from None
        return jwks_uri

    def _get_json(self, url: str) -> dict[str, Any]:
        """GET a small JSON object; any transport, status, size or syntax problem is a ProviderError."""
        try:
            with self._http.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise ProviderError(f"GET {url} answered {response.status_code}")
                body = _read_capped(response.iter_bytes(), MAX_DOCUMENT_BYTES, url)
        except httpx.HTTPError as exc:
            raise ProviderError(f"GET {url} failed: {type(exc).__name__}: {exc}") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise ProviderError(f"GET {url} did not return JSON") from None
        if not isinstance(document, dict):
            raise ProviderError(f"GET {url} did not return a JSON object")
        return document


def _read_capped(chunks: Iterable[bytes], limit: int, url: str) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body.extend(chunk)
        if len(body) > limit:
            raise ProviderError(f"GET {url} returned more than {limit} bytes")
    return bytes(body)


def parse_jwks(document: Mapping[str, Any], algorithms: Iterable[str], now: float) -> KeySet:
    """Parse the signature keys of a JWKS for each allowed algorithm they can serve.

    Keys are bound to one algorithm each so a token's ``alg`` cannot reinterpret a key
    (an RSA key is never used as an HMAC secret). Encryption keys and unusable keys are skipped.
    """
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ProviderError("JWKS has no 'keys' list")
    keys: dict[tuple[str | None, str], jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        for alg in algorithms:
            key = _parse_key(entry, alg)
            if key is not None:
                keys[(kid, alg)] = key
    kids = frozenset(kid for kid, _ in keys)
    if None in kids and len(kids) > 1:
        # A key without kid is only unambiguous when it is the only one.
        keys = {k: v for k, v in keys.items() if k[0] is not None}
        kids = kids - {None}
    return KeySet(keys=keys, kids=kids, fetched_at=now)


def _parse_key(entry: dict[str, Any], alg: str) -> jwt.PyJWK | None:
    declared = entry.get("alg")
    if declared is not None and declared != alg:
        return None
    try:
        return jwt.PyJWK(entry, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None


# --- token ----------------------------------------------------------------------------------------


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unverified header and payload, read only to choose the issuer and the key."""
    if not isinstance(token, str) or not token:
        raise Unauthenticated("bearer token is missing")
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated("bearer token is too large")
    if token.count(".") != 2:
        raise Unauthenticated("bearer token is not a signed JWT")
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        raise Unauthenticated("bearer token is malformed") from None
    return header, payload


_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token has expired"),
    (jwt.ImmatureSignatureError, "token is not yet valid"),
    (jwt.InvalidIssuerError, "token issuer does not match"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidAlgorithmError, "token signature algorithm is not allowed for this issuer"),
    (jwt.InvalidIssuedAtError, "token has an invalid issued-at time"),
)


def _decode(token: str, key: jwt.PyJWK, alg: str, config: OidcIssuerConfig) -> dict[str, Any]:
    """Verify signature, ``iss``, ``exp`` (required), ``nbf`` and ``iat`` with the leeway."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            issuer=config.issuer,
            leeway=config.leeway_seconds,
            options={"require": ["exp", "iss"], "verify_aud": False},
        )
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthenticated(f"token lacks the required {exc.claim!r} claim") from None
    except jwt.PyJWTError as exc:
        raise Unauthenticated(_refusal_message(exc)) from None
    except (ValueError, TypeError):
        raise Unauthenticated("bearer token is malformed") from None
    return claims


def _refusal_message(exc: jwt.PyJWTError) -> str:
    for kind, message in _REFUSALS:
        if isinstance(exc, kind):
            return message
    return "bearer token is invalid"


def _check_audience(claims: Mapping[str, Any], config: OidcIssuerConfig) -> None:
    """``aud`` must name Sovra; Keycloak access tokens may instead carry our client id in ``azp``."""
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if any(isinstance(a, str) and a in config.audiences for a in audiences):
        return
    if config.accept_azp_as_audience and claims.get("azp") in config.audiences:
        return
    raise Unauthenticated("token was not issued for this service (audience mismatch)")


# --- claims ---------------------------------------------------------------------------------------


def map_claims(claims: Mapping[str, Any], config: OidcIssuerConfig) -> Identity:
    """Turn verified claims into an Identity using the issuer's claim mapping."""
    subject = claim_at(claims, config.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated(f"token has no usable {config.subject_claim!r} claim")
    name = claim_at(claims, config.name_claim)
    where = f"issuer {config.issuer} subject {subject}"
    return Identity(
        principal=f"oidc:{config.issuer}#{subject}",
        display_name=name if isinstance(name, str) and name else subject,
        groups=_strings(claim_at(claims, config.groups_claim)),
        project_roles=project_roles(claim_at(claims, config.project_roles_claim), where),
        is_admin=bool(set(config.admin_roles) & set(role_names(claims, config))),
        source="oidc",
    )


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``realm_access.roles``), or None when any step is missing."""
    return _walk(claims, path.split("."))


def _walk(value: Any, segments: Iterable[str]) -> Any:
    for segment in segments:
        if not isinstance(value, Mapping):
            return None
        value = value.get(segment)
    return value


def role_names(claims: Mapping[str, Any], config: OidcIssuerConfig) -> tuple[str, ...]:
    """Role names from every ``role_claims`` path, ``{client}`` expanded to each configured audience.

    Only our own audiences are expanded: roles a token holds for some other client are not ours.
    The template is split before expansion so client ids containing dots still work.
    """
    found: list[str] = []
    for template in config.role_claims:
        segments = template.split(".")
        clients = config.audiences if any("{client}" in s for s in segments) else ("",)
        for client in clients:
            path = [s.replace("{client}", client) for s in segments]
            found.extend(_strings(_walk(claims, path)))
    return tuple(found)


def _strings(value: Any) -> tuple[str, ...]:
    """A string or list of strings as a de-duplicated tuple; anything else is empty."""
    if isinstance(value, str):
        return (value,) if value else ()
    if not isinstance(value, list):
        return ()
    return tuple(dict.fromkeys(v for v in value if isinstance(v, str) and v))


def project_roles(value: Any, where: str) -> dict[str, Role]:
    """Parse ``{"project": "role"}`` or ``["project:role", ...]``; bad entries are skipped with a warning.

    ``admin`` is global in the role model, so it is not accepted as a per-project role; when a
    project appears twice the higher role wins.
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        pairs = [_split_pair(item) for item in value]
    else:
        log.warning("OIDC %s: project roles claim is neither an object nor a list; ignored", where)
        return {}
    roles: dict[str, Role] = {}
    for project, text in pairs:
        role = _project_role(project, text, where)
        if role is not None and role > roles.get(project, 0):
            roles[project] = role
    return roles


def _split_pair(item: Any) -> tuple[Any, Any]:
    if not isinstance(item, str) or ":" not in item:
        return item, None
    project, _, role = item.rpartition(":")
    return project, role


def _project_role(project: Any, text: Any, where: str) -> Role | None:
    if not isinstance(project, str) or not project or not isinstance(text, str):
        log.warning("OIDC %s: malformed project role entry %.80r ignored", where, project)
        return None
    try:
        role = Role.parse(text)
    except InvalidArgument:
        log.warning("OIDC %s: unknown role %.40r for project %.80r ignored", where, text, project)
        return None
    if role is Role.ADMIN:
        log.warning("OIDC %s: 'admin' is global, not a project role; ignored for %.80r", where, project)
        return None
    return role
