"""Resource identifiers: UUIDv7 (RFC 9562), so ids sort by creation time.

Time-ordered ids make keyset pagination follow creation order and keep B-tree inserts local.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

_lock = threading.Lock()
_last = 0
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def new_id() -> str:
    """A new UUIDv7 as its canonical lowercase string, strictly increasing within this process.

    Ids made in the same millisecond would otherwise order at random (RFC 9562, section 6.2,
    method 2): when the random candidate is not above the previous id, the previous id plus one
    is used instead.
    """
    global _last
    candidate = _candidate()
    with _lock:
        _last = candidate if candidate > _last else _last + 1
        return str(uuid.UUID(int=_last))


def _candidate() -> int:
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 9562 variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return value


def is_id(text: str) -> bool:
    """Whether ``text`` is a canonical lowercase UUID string."""
    return bool(_UUID_RE.fullmatch(text))
