"""Opaque keyset page tokens, bound to the query that issued them (AIP-158)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Generic, TypeVar

from sovra.domain.errors import InvalidArgument

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str | None


def query_fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def encode_token(after_id: str, fingerprint: str) -> str:
    raw = json.dumps({"a": after_id, "q": fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str | None, fingerprint: str) -> str | None:
    """The id to continue after, or None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        after, issued_for = data["a"], data["q"]
        if not isinstance(after, str) or not isinstance(issued_for, str):
            raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument("page_token is not a token this API issued", field="page_token") from exc
    if issued_for != fingerprint:
        raise InvalidArgument(
            "page_token was issued for a different query; repeat the same filters or start over",
            field="page_token",
        )
    return after


def paginate(rows: list[T], page_size: int, key: str, fingerprint: str) -> Page[T]:
    """Cut ``rows`` (fetched with ``page_size + 1``) into a page and the token for the next."""
    if len(rows) > page_size:
        rows = rows[:page_size]
        return Page(rows, encode_token(getattr(rows[-1], key), fingerprint))
    return Page(rows, None)
