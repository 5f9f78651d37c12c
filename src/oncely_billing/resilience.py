"""Calls to systems we do not own (usage store, Stripe): timeouts, retries, a breaker, a throttle.

One mechanism for every outside call, so the billing jobs fail the same understandable way:

* :func:`call_with_retries` — retries what ``retry_on`` accepts with full-jitter exponential
  backoff (``base * 2**n`` capped at ``max_delay``, drawn uniformly from ``[0, that]``), at most
  ``attempts`` times, and only while the :class:`CircuitBreaker` allows calls;
* :class:`CircuitBreaker` — after ``failure_threshold`` consecutive failures it **opens** and
  refuses calls at once (:class:`CircuitOpen`) for ``reset_after`` seconds; then it is
  **half-open**: exactly one trial call goes through, however many threads ask (the others are
  refused as if open until the trial reports, or for ``reset_after`` if it never does);
  success closes it, failure opens it again::

      closed ──N failures in a row──► open ──reset_after──► half_open ──success──► closed
                                        ▲                       │
                                        └──────failure──────────┘

* :class:`Throttle` — a token bucket: at most ``rate`` calls per second on average with bursts of
  ``burst``; ``acquire()`` blocks until a token is free, so callers stay *under* a provider's
  limit instead of bursting into it and being told 429.

Time comes from a ``monotonic`` callable and waits go through a ``sleep`` callable, so tests drive
all three with a fake clock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class CircuitOpen(Exception):
    """The breaker is open: the call was not attempted."""

    def __init__(self, name: str, retry_in: float) -> None:
        self.name = name
        self.retry_in = retry_in
        super().__init__(f"{name} is unavailable (circuit open); next try in {retry_in:.1f}s")


@dataclass
class CircuitBreaker:
    name: str
    failure_threshold: int = 5
    reset_after: float = 30.0
    monotonic: Callable[[], float] = time.monotonic
    state: str = "closed"
    failures: int = 0
    opened_at: float = 0.0
    on_change: Callable[[str, str], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _trial_at: float | None = field(default=None, repr=False)  # the half-open trial's start

    def __post_init__(self) -> None:
        self._trial_done = threading.Condition(self._lock)

    def before_call(self, wait_for_trial: float = 0.0) -> None:
        """Raise :class:`CircuitOpen` unless a call may go out now. While a half-open trial is
        out, wait up to ``wait_for_trial`` seconds for its verdict (a pool of senders then
        carries on after one successful trial instead of failing)."""
        with self._lock:
            if self.state == "half_open" and self._trial_at is not None and wait_for_trial > 0:
                self._trial_done.wait_for(lambda: self._trial_at is None, wait_for_trial)
            if self.state == "closed":
                return
            now = self.monotonic()
            if self.state == "open":
                waited = now - self.opened_at
                if waited < self.reset_after:
                    raise CircuitOpen(self.name, self.reset_after - waited)
                self._set("half_open")
            elif self._trial_at is not None and now - self._trial_at < self.reset_after:
                raise CircuitOpen(self.name, self.reset_after - (now - self._trial_at))
            self._trial_at = now  # this caller is the one trial

    def trip(self, remaining: float) -> None:
        """Open the breaker as if it had opened ``reset_after - remaining`` seconds ago (a
        state learnt from elsewhere: ``remaining`` 0 means the next call is the one trial)."""
        with self._lock:
            self.opened_at = self.monotonic() - max(0.0, self.reset_after - remaining)
            self._trial_at = None
            if self.state != "open":
                self._set("open")

    def record_success(self) -> None:
        with self._lock:
            self.failures = 0
            self._trial_at = None
            self._trial_done.notify_all()
            if self.state != "closed":
                self._set("closed")

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1
            self._trial_at = None
            self._trial_done.notify_all()
            if self.state == "half_open" or self.failures >= self.failure_threshold:
                self.opened_at = self.monotonic()
                if self.state != "open":
                    self._set("open")

    def _set(self, state: str) -> None:
        previous, self.state = self.state, state
        if self.on_change is not None:
            self.on_change(previous, state)


@dataclass
class Backoff:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.max_delay, self.base_delay * (2.0 ** min(retry_number, 60)))
        return (rng or random).uniform(0.0, ceiling)


def call_with_retries(
    fn: Callable[[], T],
    *,
    retry_on: Callable[[BaseException], bool],
    backoff: Backoff | None = None,
    breaker: CircuitBreaker | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, BaseException, float], Any] | None = None,
    retry_after: Callable[[BaseException], float | None] | None = None,
) -> T:
    """Call ``fn``; retry failures ``retry_on`` accepts; raise the last error when out of tries.

    A failure that is not retryable is raised at once and does not count against the breaker
    (the other side answered; the request was wrong). ``retry_after`` may read a server's hint
    (such as a Retry-After header) that overrides the computed delay when it is longer.
    """
    policy = backoff or Backoff()
    attempt = 0
    while True:
        if breaker is not None:
            breaker.before_call()
        try:
            result = fn()
        except BaseException as exc:
            if not retry_on(exc):
                if breaker is not None:
                    breaker.record_success()
                raise
            if breaker is not None:
                breaker.record_failure()
            attempt += 1
            if attempt >= policy.attempts:
                raise
            delay = policy.delay(attempt - 1)
            hinted = retry_after(exc) if retry_after is not None else None
            if hinted is not None and hinted > delay:
                delay = hinted
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
            continue
        if breaker is not None:
            breaker.record_success()
        return result


class Throttle:
    """A thread-safe token bucket: ``rate`` tokens per second, holding at most ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("throttle rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate / 10))
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = monotonic()
        self._lock = threading.Lock()
        self.waited = 0.0  # total seconds callers spent waiting: shows the throttle working

    def acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens``, waiting as needed; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= tokens:
                    self._tokens -= tokens
                    self.waited += waited
                    return waited
                need = (tokens - self._tokens) / self.rate
            self._sleep(need)
            waited += need
