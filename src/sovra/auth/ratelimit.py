"""Per-principal request rate limits: a token bucket per principal, in this process.

Each API replica limits on its own, so the cluster-wide allowance is the per-replica rate times
the number of replicas; that is the usual trade-off (no shared state on the hot path).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sovra.domain.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_second: float, burst: int, max_principals: int = 100_000) -> None:
        self.per_second = per_second
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._max_principals = max_principals

    def check(self, principal: str) -> None:
        """Spend one token of ``principal``'s bucket or raise ``RateLimited`` with Retry-After."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(principal)
            if bucket is None:
                if len(self._buckets) >= self._max_principals:
                    self._buckets.clear()  # bounded memory; a reset only ever grants more
                bucket = self._buckets[principal] = _Bucket(float(self.burst), now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.per_second)
            bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait = (1 - bucket.tokens) / self.per_second
        raise RateLimited(
            f"too many requests from {principal}: the limit is {self.per_second:g}/s with bursts of "
            f"{self.burst}; retry after {wait:.1f}s",
            retry_after=max(1, int(wait + 0.999)),
        )
