"""Sending meter events to Stripe: the official SDK behind a throttle, retries and a breaker.

:class:`StripeMeterClient` ``.send(event)`` makes one ``POST /v1/billing/meter_events`` through
``stripe.StripeClient`` and classifies the answer:

=====================================================  ===========================================
answer                                                 result
=====================================================  ===========================================
200                                                    ``DELIVERED``
400 "An event already exists with identifier …"        ``DUPLICATE`` — Stripe holds this exact
                                                       billable fact already: counted as delivered,
                                                       never retried
other 4xx (400, 402, 404, …)                           ``FAILED`` with Stripe's error code (or
                                                       ``http_<status>``): recorded per org
401 / 403                                              :class:`StripeRejectedAccount` — the key or
                                                       account is wrong, not the org: nothing is
                                                       recorded per org, the run stops
429, 5xx, timeouts, connection errors                  retried with full-jitter exponential
                                                       backoff; when out of tries, or while the
                                                       breaker is open, :class:`StripeUnavailable`.
                                                       5xx and lost connections count towards the
                                                       breaker; 429 does not (Stripe is up and
                                                       asks us to slow down)
=====================================================  ===========================================

Limits kept on the caller's side (Stripe: ~1,000 calls/s per account, one concurrent call per
customer and meter): a shared :class:`~oncely_billing.resilience.Throttle` (``rate`` calls/s,
default 200, taken again by every retry) and a lock per (customer, event name), held across the
retries of a call (the job is a singleton, so its process is the only sender). A 429 also slows
the throttle down (x0.7, floor ``rate/20``); each success gives back ``rate/500``, so a 429 storm
lowers the pace until Stripe stops complaining. 429s have their own retry budget
(``rate_limit_attempts``) apart from 5xx/timeouts (``attempts``).
The SDK's own retries are off (``max_network_retries=0``) so one policy governs.

The API key comes only from the environment (``ONCELY_STRIPE_API_KEY``) or the caller, is never
logged, and :class:`StripeSettings` hides it from ``repr``.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import stripe

from oncely import ConfigError
from oncely_billing.resilience import (
    Backoff,
    CircuitBreaker,
    CircuitOpen,
    Throttle,
    call_with_retries,
)

log = logging.getLogger("oncely_billing.stripe")

DUPLICATE_MARKER = "already exists with identifier"
ENV_PREFIX = "ONCELY_STRIPE_"


class StripeUnavailable(Exception):
    """Stripe did not take the call (breaker open, or transient errors outlasted the retries)."""


class StripeRejectedAccount(Exception):
    """Stripe refused the credentials or the account (401/403): no org is at fault."""


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # Stripe already had this identifier: delivered earlier
    FAILED = "failed"


@dataclass(frozen=True)
class MeterEvent:
    """One meter event for one org and hour; ``identifier`` makes resending it harmless. A
    late-usage correction (``correction`` = n > 0) is the hour's n-th extra event:
    ``{event}:{org}:{hour_start_ms}:c{n}``."""

    event_name: str
    org_id: str
    customer_id: str
    value: int
    hour_start_ms: int
    timestamp: int  # seconds since the epoch: the end of the hour
    correction: int = 0

    @property
    def identifier(self) -> str:
        base = f"{self.event_name}:{self.org_id}:{self.hour_start_ms}"
        return f"{base}:c{self.correction}" if self.correction else base

    def params(self) -> dict[str, Any]:
        return {
            "event_name": self.event_name,
            "identifier": self.identifier,
            "timestamp": self.timestamp,
            "payload": {"stripe_customer_id": self.customer_id, "value": str(self.value)},
        }


@dataclass(frozen=True)
class SendResult:
    event: MeterEvent
    outcome: Outcome
    attempts: int = 1
    code: str | None = None
    message: str | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome != Outcome.FAILED


@dataclass(frozen=True)
class StripeSettings:
    """How to reach Stripe and how hard to push. ``from_env()`` reads ``ONCELY_STRIPE_*``."""

    api_key: str = field(repr=False)
    api_base: str = "https://api.stripe.com"  # ONCELY_STRIPE_API_BASE (the stub in tests)
    rate: float = 200.0  # calls/s for the whole process; Stripe allows ~1,000
    burst: float | None = None  # default rate / 10
    concurrency: int = 32  # sender threads: 200 calls/s even at ~150 ms per call
    timeout: float = 10.0  # seconds per HTTP call
    attempts: int = 6  # tries per event for 5xx/timeouts
    rate_limit_attempts: int = 12  # tries per event while Stripe answers 429
    base_delay: float = 0.5
    max_delay: float = 30.0
    breaker_threshold: int = 10  # consecutive transient failures that open the breaker
    breaker_reset: float = 30.0  # seconds open before one trial call

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> StripeSettings:
        env = dict(os.environ if environ is None else environ)
        key = overrides.pop("api_key", None) or env.get(ENV_PREFIX + "API_KEY", "")
        if not key:
            raise ConfigError(
                "no Stripe API key: set ONCELY_STRIPE_API_KEY (a restricted key with "
                "write access to billing meter events)"
            )
        values: dict[str, Any] = {}
        for name, kind in (("api_base", str), ("rate", float), ("burst", float),
                           ("concurrency", int), ("timeout", float), ("attempts", int),
                           ("rate_limit_attempts", int),
                           ("base_delay", float), ("max_delay", float),
                           ("breaker_threshold", int), ("breaker_reset", float)):
            raw = env.get(ENV_PREFIX + name.upper())
            if raw:
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid "
                                      f"{kind.__name__}") from None
        values.update(overrides)
        return cls(api_key=key, **values)

    def with_(self, **changes: Any) -> StripeSettings:
        return replace(self, **changes)


@dataclass
class SendStats:
    calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    delivered: int = 0
    duplicates: int = 0
    failed: int = 0


class KeyedLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: tuple[str, str]) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


def is_transient(exc: BaseException) -> bool:
    """Worth another try: rate limited, Stripe-side errors, timeouts and connection failures."""
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError):
        return True
    if isinstance(exc, stripe.StripeError):
        status = exc.http_status or 0
        return status == 429 or status >= 500
    return False


def _is_rate_limited(exc: BaseException) -> bool:
    return isinstance(exc, stripe.RateLimitError) or (
        isinstance(exc, stripe.StripeError) and exc.http_status == 429)


def is_duplicate(exc: BaseException) -> bool:
    """Stripe's answer to a repeated identifier: the event is there already."""
    return (isinstance(exc, stripe.StripeError) and exc.http_status == 400
            and DUPLICATE_MARKER in (exc.user_message or str(exc)))


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, stripe.StripeError) and exc.headers:
        raw = exc.headers.get("Retry-After")
        try:
            return float(raw) if raw else None
        except ValueError:
            return None
    return None


class StripeMeterClient:
    """Thread-safe sender of meter events; share one per process (one throttle, one breaker)."""

    def __init__(self, settings: StripeSettings, *,
                 on_breaker_change: Callable[[str, str], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sdk = stripe.StripeClient(
            settings.api_key,
            base_addresses={"api": settings.api_base},
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=settings.timeout),
        )
        self.throttle = Throttle(settings.rate, settings.burst, monotonic=monotonic, sleep=sleep)
        self.breaker = CircuitBreaker("stripe", settings.breaker_threshold,
                                      settings.breaker_reset, monotonic=monotonic,
                                      on_change=on_breaker_change)
        self.backoff = Backoff(max(settings.attempts, settings.rate_limit_attempts),
                               settings.base_delay, settings.max_delay)
        self._sleep = sleep
        self._locks = KeyedLocks()
        self._stats_lock = threading.Lock()
        self._stats = SendStats()

    def __repr__(self) -> str:
        return f"<StripeMeterClient {self.settings.api_base} rate={self.settings.rate}/s>"

    def stats(self) -> SendStats:
        with self._stats_lock:
            return replace(self._stats)

    @property
    def rate(self) -> float:
        """The throttle's current rate: lowered by 429s, recovering with each success."""
        return self.throttle.rate

    def _slow_down(self) -> None:
        floor = self.settings.rate / 20
        self.throttle.rate = max(floor, self.throttle.rate * 0.7)

    def _recover(self) -> None:
        if self.throttle.rate < self.settings.rate:
            self.throttle.rate = min(self.settings.rate,
                                     self.throttle.rate + self.settings.rate / 500)

    def send(self, event: MeterEvent) -> SendResult:
        """Send one event; see the module docstring for what each answer becomes."""
        attempts = 0
        failures = 0  # 5xx and timeouts; 429s have their own, larger budget

        def retry_on(exc: BaseException) -> bool:
            nonlocal failures
            if _is_rate_limited(exc):
                self._count(rate_limited=1)
                self._slow_down()
                return True
            if is_transient(exc):
                failures += 1
                return failures < self.settings.attempts
            return False

        def post() -> Any:
            nonlocal attempts
            attempts += 1
            self.breaker.before_call(wait_for_trial=self.settings.timeout + 1.0)
            self.throttle.acquire()
            self._count(calls=1)
            try:
                created = self._sdk.v1.billing.meter_events.create(
                    event.params())  # type: ignore[arg-type]
            except stripe.StripeError as exc:
                # A 429 says "slower", not "down": only 5xx and lost connections trip the breaker.
                if is_transient(exc) and not _is_rate_limited(exc):
                    self.breaker.record_failure()
                else:
                    self.breaker.record_success()
                raise
            self.breaker.record_success()
            self._recover()
            return created

        def note_retry(number: int, exc: BaseException, delay: float) -> None:
            self._count(retries=1)
            log.debug("stripe call retried", extra={"event": "metering.stripe.retry",
                                                    "identifier": event.identifier,
                                                    "error": type(exc).__name__, "delay": delay})

        with self._locks.hold((event.customer_id, event.event_name)):
            try:
                call_with_retries(post, retry_on=retry_on, backoff=self.backoff,
                                  sleep=self._sleep, on_retry=note_retry,
                                  retry_after=_retry_after)
            except CircuitOpen as exc:
                raise StripeUnavailable(str(exc)) from exc
            except stripe.StripeError as exc:
                return self._classify(event, exc, attempts)
        self._count(delivered=1)
        return SendResult(event, Outcome.DELIVERED, attempts)

    def _classify(self, event: MeterEvent, exc: stripe.StripeError, attempts: int) -> SendResult:
        if is_transient(exc):
            raise StripeUnavailable(
                f"Stripe kept failing after {attempts} tries ({_describe(exc)})") from exc
        if is_duplicate(exc):
            self._count(duplicates=1)
            return SendResult(event, Outcome.DUPLICATE, attempts)
        if exc.http_status in (401, 403):
            raise StripeRejectedAccount(
                f"Stripe refused the API key or account ({_describe(exc)}): check "
                "ONCELY_STRIPE_API_KEY") from exc
        self._count(failed=1)
        code = exc.code or f"http_{exc.http_status}"
        return SendResult(event, Outcome.FAILED, attempts, code, exc.user_message or str(exc))

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)


def _describe(exc: stripe.StripeError) -> str:
    status = exc.http_status if exc.http_status is not None else "no response"
    return f"{type(exc).__name__}, HTTP {status}, code {exc.code or '-'}"
