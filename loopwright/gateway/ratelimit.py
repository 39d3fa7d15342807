"""Per-key token buckets.

Hand-written because the rule is ten lines and must report *when* the next token arrives
(for ``Retry-After``); the async rate-limit libraries either do not, or need Redis.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketDecision:
    """Outcome of one take.

    Attributes:
        allowed: the request may proceed.
        retry_after_s: seconds until a token is available (0 when allowed).
        remaining: whole tokens left after this take.

    """

    allowed: bool
    retry_after_s: float
    remaining: int

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class TokenBuckets:
    """One token bucket per key: capacity ``burst``, refilled at ``rate`` tokens/second.

    Args:
        rate: default refill rate, tokens per second (> 0).
        burst: capacity, tokens (>= 1).
        clock: monotonic seconds (injectable for tests).

    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str, rate: float | None = None) -> BucketDecision:
        """Take one token from ``key``'s bucket (``rate`` overrides the default rate)."""
        rate = rate or self.rate
        now = self._clock()
        with self._lock:
            tokens, last = self._state.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                tokens -= 1.0
                self._state[key] = (tokens, now)
                return BucketDecision(True, 0.0, int(tokens))
            self._state[key] = (tokens, now)
            return BucketDecision(False, (1.0 - tokens) / rate, 0)
