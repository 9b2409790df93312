"""A real OIDC issuer for tests: discovery and JWKS over HTTP on 127.0.0.1, tokens signed with its keys.

It serves ``<issuer>/.well-known/openid-configuration`` and ``<issuer>/protocol/openid-connect/certs``
(Keycloak's layout) from a ``ThreadingHTTPServer`` in a thread, counts every request per path, can
rotate and retire keys, and can simulate an outage. ``mint`` signs any claims and headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

REALM_PATH = "/realms/sovra"
DISCOVERY_PATH = f"{REALM_PATH}/.well-known/openid-configuration"
JWKS_PATH = f"{REALM_PATH}/protocol/openid-connect/certs"
CLIENT_ID = "sovra"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@dataclass(frozen=True)
class SigningKey:
    """A private key with its key id and the algorithm it signs with."""

    kid: str
    alg: str
    private_key: PrivateKey

    @classmethod
    def generate(cls, alg: str = "RS256") -> SigningKey:
        private_key: PrivateKey
        if alg.startswith("ES"):
            private_key = ec.generate_private_key(ec.SECP256R1())
        else:
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid=f"{alg.lower()}-{secrets.token_hex(4)}", alg=alg, private_key=private_key)

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class LocalIssuer:
    """State of the issuer; the HTTP handler reads it under ``lock``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.issuer = base_url + REALM_PATH
        self.jwks_uri = base_url + JWKS_PATH
        self.lock = threading.Lock()
        self.keys: dict[str, SigningKey] = {}
        self.published: list[str] = []
        self.requests: Counter[str] = Counter()
        self.outage_status: int | None = None
        self.discovery_overrides: dict[str, Any] = {}
        self.extra_jwks: list[dict[str, Any]] = []
        self.rsa = self.add_key("RS256")
        self.ec = self.add_key("ES256")

    # --- keys ---

    def add_key(self, alg: str = "RS256") -> SigningKey:
        """Generate a key and publish it in the JWKS."""
        key = SigningKey.generate(alg)
        with self.lock:
            self.keys[key.kid] = key
            self.published.append(key.kid)
        return key

    def retire(self, kid: str) -> None:
        """Stop publishing a key; it can still sign (as a leaked or stale key would)."""
        with self.lock:
            self.published.remove(kid)

    def rotate(self, old: SigningKey) -> SigningKey:
        """Publish a new key of the same algorithm and retire ``old``."""
        new = self.add_key(old.alg)
        self.retire(old.kid)
        return new

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            keys = [self.keys[kid].public_jwk() for kid in self.published]
            return {"keys": keys + list(self.extra_jwks)}

    def discovery(self) -> dict[str, Any]:
        document = {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "authorization_endpoint": f"{self.issuer}/protocol/openid-connect/auth",
            "token_endpoint": f"{self.issuer}/protocol/openid-connect/token",
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }
        with self.lock:
            document.update(self.discovery_overrides)
        return document

    @property
    def discovery_fetches(self) -> int:
        return self.requests[DISCOVERY_PATH]

    @property
    def jwks_fetches(self) -> int:
        return self.requests[JWKS_PATH]

    # --- tokens ---

    def claims(self, lifetime: float = 300, **overrides: Any) -> dict[str, Any]:
        """Plain OIDC claims for user ``alice``, addressed to ``sovra``; ``None`` values drop a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "user-alice",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + int(lifetime),
            "preferred_username": "alice",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def keycloak_claims(self, **overrides: Any) -> dict[str, Any]:
        """An access token as Keycloak issues it: ``aud`` "account", our client id in ``azp``."""
        claims = self.claims(
            aud="account",
            azp=CLIENT_ID,
            typ="Bearer",
            realm_access={"roles": ["offline_access", "default-roles-sovra"]},
            resource_access={"account": {"roles": ["manage-account"]}},
            groups=["/team-a", "/team-a/ops"],
        )
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        key: SigningKey | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign ``claims`` (default: ``self.claims()``) with ``key`` (default: the RSA key).

        ``headers`` are merged over ``{"kid": key.kid}``; a ``None`` value removes that header.
        """
        key = key or self.rsa
        merged = {"kid": key.kid, **(headers or {})}
        return jwt.encode(
            dict(claims if claims is not None else self.claims()),
            key.private_key,
            algorithm=key.alg,
            headers={k: v for k, v in merged.items() if v is not None},
        )

    def mint_unsigned(self, claims: Mapping[str, Any], header: Mapping[str, Any]) -> str:
        """``header.payload.`` with an empty signature, as an ``alg: none`` attack sends it."""
        return f"{b64url_json(header)}.{b64url_json(claims)}."

    def mint_hmac(self, claims: Mapping[str, Any], secret: bytes, kid: str | None = None) -> str:
        """HS256 by hand (PyJWT refuses PEM secrets): the classic RS256→HS256 key-confusion attack."""
        header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
        signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"


def _handler(issuer: LocalIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            with issuer.lock:
                issuer.requests[path] += 1
                outage = issuer.outage_status
            if outage is not None:
                self._send(outage, {"error": "unavailable"})
            elif path == DISCOVERY_PATH:
                self._send(200, issuer.discovery())
            elif path == JWKS_PATH:
                self._send(200, issuer.jwks())
            else:
                self._send(404, {"error": "not found"})

        def _send(self, status: int, body: Mapping[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # keep test output quiet

    return Handler


@contextmanager
def running_issuer() -> Iterator[LocalIssuer]:
    """Serve a fresh issuer on a free loopback port for the duration of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    issuer = LocalIssuer(f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(issuer)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="oidc-issuer", daemon=True
    )
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
