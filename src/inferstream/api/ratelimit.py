"""Token buckets, in memory (one API process; replicas each keep their own): requests
per credential, and scans per tenant (the tenant's fair share of the pipeline)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from inferstream.api.errors import RateLimited


class RateLimiter:
    """``rate_per_s`` units a second per caller, with bursts up to ``burst``; ``unit``
    and ``whose`` name them in the refusal ("requests", "this credential")."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        unit: str = "requests",
        whose: str = "this credential",
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.unit, self.whose = unit, whose
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str, cost: float = 1.0) -> None:
        """Spend ``cost`` tokens of ``caller``'s bucket; :class:`RateLimited`, spending
        nothing, when it holds fewer (``cost`` must not exceed the burst)."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(caller, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < cost:
                self._buckets[caller] = (tokens, now)
                wait = max(1, math.ceil((cost - tokens) / self.rate))
                raise RateLimited(
                    f"rate limit of {self.rate:g} {self.unit}/s (burst {self.burst:g}) "
                    f"reached for {self.whose}; retry after {wait} s",
                    wait,
                )
            self._buckets[caller] = (tokens - cost, now)
