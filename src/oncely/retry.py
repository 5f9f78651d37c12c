"""Retry policies, and the request a handler raises to be retried.

* :class:`RetryPolicy` is passed to ``@app.task(retry=RetryPolicy(attempts=5,
  backoff="exponential", base_delay=5.0, jitter=True))``: how many attempts a job gets and how
  long to wait between them.
* :class:`Retry` is **raised** from a handler (``raise oncely.Retry(delay=30)``) to ask for another
  attempt, after ``delay`` seconds or, without one, after the task policy's delay.

``oncely.Retry(attempts=…, backoff=…)`` used to be the policy too; called with policy arguments
it still returns a :class:`RetryPolicy`, with a ``DeprecationWarning``.

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
import warnings
from datetime import datetime, timedelta
from typing import Any, Literal

from oncely.errors import ConfigError, HandlerSignal

Backoff = Literal["fixed", "linear", "exponential"]
_BACKOFFS = ("fixed", "linear", "exponential")
_POLICY_OPTIONS = ("attempts", "backoff", "base_delay", "max_delay", "jitter")


class RetryPolicy:
    """How many attempts a task's jobs get, and the delay before each retry."""

    __slots__ = ("attempts", "backoff", "base_delay", "jitter", "max_delay")

    def __init__(
        self,
        attempts: int = 1,
        *,
        backoff: Backoff = "exponential",
        base_delay: float = 1.0,
        max_delay: float = 3600.0,
        jitter: bool = False,
    ) -> None:
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ConfigError(
                f"RetryPolicy(attempts={attempts!r}): attempts must be an integer >= 1")
        if backoff not in _BACKOFFS:
            raise ConfigError(
                f"RetryPolicy(backoff={backoff!r}): use one of {', '.join(_BACKOFFS)}")
        for option, value in (("base_delay", base_delay), ("max_delay", max_delay)):
            _check_seconds("RetryPolicy", option, value)
        self.attempts = attempts
        self.backoff: Backoff = backoff
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.jitter = jitter

    @property
    def max_attempts(self) -> int:
        return self.attempts

    def delay_after(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed."""
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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RetryPolicy):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, name) for name in self.__slots__))

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(attempts={self.attempts!r}, backoff={self.backoff!r}, "
            f"base_delay={self.base_delay!r}, max_delay={self.max_delay!r}, jitter={self.jitter!r})"
        )


class Retry(HandlerSignal):
    """Raised from a handler: retry this job, after ``delay`` seconds or the policy's delay."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if args or any(name in kwargs for name in _POLICY_OPTIONS):
            warnings.warn(
                "oncely.RetryPolicy(attempts=…) as a retry policy is deprecated: use "
                "oncely.RetryPolicy(…); raise oncely.Retry(delay=…) to ask for a retry",
                DeprecationWarning, stacklevel=2)
            return RetryPolicy(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, *, delay: float | None = None,
                 reason: str = "retry requested by handler") -> None:
        if delay is not None:
            _check_seconds("Retry", "delay", delay)
        self.delay = delay
        self.reason = reason
        super().__init__(reason)

    def __repr__(self) -> str:
        return f"Retry(delay={self.delay!r})"


def _check_seconds(owner: str, option: str, value: object) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{owner}({option}={value!r}): {option} must be a finite number "
                          "of seconds >= 0")


NO_RETRY = RetryPolicy(attempts=1)
