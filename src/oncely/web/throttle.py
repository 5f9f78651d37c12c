"""How fast the dashboard lets anyone guess its token.

Two token buckets, spent only by *failed* attempts (a wrong token at ``/login`` or in an
``Authorization: Bearer`` header): one per client address and one shared by every client. An
attempt is heard only while both buckets hold a token; otherwise it is answered 429 at once, with
``Retry-After``, and the token it carried is not even compared. So parallel requests cannot
outrun the limit (the buckets are spent before the answer), one noisy client cannot lock out
another until it has spent the shared bucket too, and a flood from many addresses is held to the
shared rate: with the defaults, a burst of 20 guesses and then one per second in all, one every
ten seconds per address.

A correct token spends nothing. Time comes from an injectable monotonic clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_CLIENTS = 10_000  # addresses tracked at once; the fullest buckets are forgotten first


@dataclass(frozen=True)
class Bucket:
    capacity: float  # failed attempts allowed in a burst
    refill: float  # seconds to earn one attempt back


PER_CLIENT = Bucket(capacity=5, refill=10.0)
OVERALL = Bucket(capacity=20, refill=1.0)


class Throttle:
    def __init__(self, per_client: Bucket = PER_CLIENT, overall: Bucket = OVERALL,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.per_client = per_client
        self.overall = overall
        self.monotonic = monotonic
        self._lock = threading.Lock()
        # level and the time it was measured, per client and for everyone (key None)
        self._levels: dict[str | None, tuple[float, float]] = {}

    def _level(self, key: str | None, now: float) -> float:
        bucket = self.overall if key is None else self.per_client
        level, at = self._levels.get(key, (bucket.capacity, now))
        return min(bucket.capacity, level + (now - at) / bucket.refill)

    def wait(self, client: str) -> float:
        """Seconds ``client`` must wait before an attempt is heard; 0 when it may try now."""
        with self._lock:
            now = self.monotonic()
            waits = [(1 - self._level(key, now)) * bucket.refill
                     for key, bucket in ((client, self.per_client), (None, self.overall))]
            return max(0.0, *waits)

    def failed(self, client: str) -> None:
        """Spend one attempt of ``client``'s bucket and of the shared one."""
        with self._lock:
            now = self.monotonic()
            for key in (client, None):
                self._levels[key] = (self._level(key, now) - 1, now)
            if len(self._levels) > MAX_CLIENTS:
                self._forget(now)

    def _forget(self, now: float) -> None:
        by_level = sorted((k for k in self._levels if k is not None),
                          key=lambda k: self._level(k, now), reverse=True)
        for key in by_level[: len(by_level) // 2]:
            del self._levels[key]
