"""Token buckets: `rate` tokens per second on average, at most `burst` at once."""

from __future__ import annotations

import time


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self.updated = time.monotonic()

    def take(self, cost: float = 1.0, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


class KeyedBuckets:
    """One bucket per key (a patient, a bearer token), for as many keys as are active: a
    bucket that would be full again is dropped, so idle keys cost nothing."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[object, TokenBucket] = {}
        self._next_sweep = time.monotonic()

    def take(self, key: object, cost: float = 1.0) -> bool:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take(cost, now)

    def _sweep(self, now: float) -> None:
        refill_s = self.burst / self.rate
        self._buckets = {
            key: bucket for key, bucket in self._buckets.items() if now - bucket.updated < refill_s
        }
        self._next_sweep = now + refill_s
