"""API token secrets: how they look, how they are hashed.

A token is ``sovra_`` followed by 43 URL-safe characters (256 random bits). Because the secret
has full entropy, a plain SHA-256 is a safe, fast lookup key: no salt or slow hash is needed
(unlike passwords, it cannot be guessed from a dictionary).
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "sovra_"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def looks_like_api_token(token: str) -> bool:
    return token.startswith(PREFIX)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hint(secret: str) -> str:
    """The first characters after the prefix: enough to tell tokens apart in a list."""
    return secret[len(PREFIX) : len(PREFIX) + 6]
