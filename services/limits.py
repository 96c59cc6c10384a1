"""Per-key rate limits: a token bucket for each API key name, checked by the auth interceptor
after the key and its scope (services/auth.py), so a call over its key's rate never reaches a
servicer. A key's own `rate_per_s`/`burst` in the key file win over the server's defaults
(--rate-limit-per-s, --rate-limit-burst); no rate means no limit. Without API keys there are no
identities to limit: the engine's bounded queue (--max-queued) and gRPC's max_concurrent_rpcs
bound the load instead.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; one call takes one token."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float | None = None) -> float:
        """0.0 when a token was taken; otherwise the seconds until one will be there."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimits:
    """The buckets of every key name; a key whose limit changes (key file reload) starts afresh."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()  # interceptors of one server run on one loop; cheap insurance

    def check(self, name: str, rate: float | None, burst: float | None, now: float | None = None) -> float:
        """0.0 when the call may go on, else the seconds to wait (no rate: never limited)."""
        if rate is None or rate <= 0 or math.isnan(rate):
            return 0.0
        size = burst if burst is not None and burst >= 1 else max(1.0, rate)
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None or bucket.rate != rate or bucket.burst != size:
                bucket = self._buckets[name] = TokenBucket(rate, size, stamp=now)
            return bucket.take(now)
