"""Per-caller token buckets, in memory (one API process; replicas each keep their own)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from inferstream.api.errors import RateLimited


class RateLimiter:
    """``rate_per_s`` requests a second per caller, with bursts up to ``burst``."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str) -> None:
        """Spend one token of ``caller``'s bucket; :class:`RateLimited` when it is empty."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(caller, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                raise RateLimited(
                    f"rate limit of {self.rate:g} requests/s (burst {self.burst:g}) reached "
                    f"for this credential; retry after {wait} s",
                    wait,
                )
            self._buckets[caller] = (tokens - 1.0, now)
