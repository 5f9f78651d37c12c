"""Retry policies: when a failed attempt runs again, and when a job gives up.

``Retry`` has two roles, one class:

* as a **policy**, passed to ``@app.task(retry=Retry(attempts=5, backoff="exponential",
  base_delay=5.0, jitter=True))``, it says how many attempts a job gets and how long to wait
  between them;
* **raised** from a handler (``raise oncely.Retry(delay=30)``), it asks for another attempt,
  after ``delay`` seconds or, without one, after the task policy's delay.

Delay before attempt ``n + 1`` after attempt ``n`` failed (``base`` = ``base_delay``):

==============  ==========================
``fixed``       ``base``
``linear``      ``base * n``
``exponential`` ``base * 2 ** (n - 1)``
==============  ==========================

capped at ``max_delay``. With ``jitter=True`` the delay is drawn uniformly from ``[0, delay]``
("full jitter"), which spreads a burst of failures so they do not retry in lock-step.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import Literal

from oncely.errors import ConfigError, HandlerSignal

Backoff = Literal["fixed", "linear", "exponential"]
_BACKOFFS = ("fixed", "linear", "exponential")


class Retry(HandlerSignal):
    """A retry policy, or (raised from a handler) a request to retry this job."""

    def __init__(
        self,
        attempts: int | None = None,
        *,
        backoff: Backoff = "exponential",
        base_delay: float = 1.0,
        max_delay: float = 3600.0,
        jitter: bool = False,
        delay: float | None = None,
        reason: str = "retry requested by handler",
    ) -> None:
        if attempts is not None and (not isinstance(attempts, int) or attempts < 1):
            raise ConfigError(f"Retry(attempts={attempts!r}): attempts must be an integer >= 1")
        if backoff not in _BACKOFFS:
            raise ConfigError(f"Retry(backoff={backoff!r}): use one of {', '.join(_BACKOFFS)}")
        for option, value in (("base_delay", base_delay), ("max_delay", max_delay),
                              ("delay", delay)):
            if value is not None and not _seconds_ok(value):
                raise ConfigError(f"Retry({option}={value!r}): {option} must be a finite number "
                                  "of seconds >= 0")
        self.attempts = attempts
        self.backoff: Backoff = backoff
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.jitter = jitter
        self.delay = delay
        self.reason = reason
        super().__init__(reason)

    @property
    def max_attempts(self) -> int:
        return self.attempts if self.attempts is not None else 1

    def delay_after(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed."""
        if self.delay is not None:
            return self.delay
        n = max(1, attempt)
        if self.backoff == "fixed":
            delay = self.base_delay
        elif self.backoff == "linear":
            delay = self.base_delay * n
        else:
            # 2**n overflows float for absurd attempt counts; the cap makes the exact value moot.
            delay = self.base_delay * (2.0 ** min(n - 1, 1000))
        delay = min(delay, self.max_delay)
        if self.jitter:
            delay = (rng or random).uniform(0.0, delay)
        return delay

    def next_retry_at(
        self, attempt: int, now: datetime, rng: random.Random | None = None
    ) -> datetime:
        return now + timedelta(seconds=self.delay_after(attempt, rng))

    def __repr__(self) -> str:
        if self.delay is not None:
            return f"Retry(delay={self.delay!r})"
        return (
            f"Retry(attempts={self.attempts!r}, backoff={self.backoff!r}, "
            f"base_delay={self.base_delay!r}, max_delay={self.max_delay!r}, jitter={self.jitter!r})"
        )


def _seconds_ok(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


NO_RETRY = Retry(attempts=1)
