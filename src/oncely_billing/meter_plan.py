"""What Stripe metering sends, and for which hours: pure functions of usage, time and settings.

* :class:`OrgHourUsage` / :data:`HourlyUsage` — one org's usage in one hour, and the callable the
  job asks for a whole hour at once;
* :func:`meter_events` — the two meter events of an org and hour (``tracing_observations``,
  ``tracing_events``), stamped at the hour's end;
* :class:`Plan` — given the watermark and the clock, which hours are due and which are past
  Stripe's 35-day limit (:func:`oldest_sendable`);
* :class:`MeterConfig` — the job's knobs.

**Time base.** An event is billed at the hour it belongs to by *event time* (what the usage
sources count by): the meter event of hour ``[H, H+1)`` carries ``timestamp = H+1`` whenever it is
sent, the hour's own event at ``H + 65 min`` and any late-usage correction later (see
:mod:`oncely_billing.stripe_reconcile`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import oncely
from oncely_billing.stripe_client import MeterEvent

OBSERVATIONS_METER = "tracing_observations"
EVENTS_METER = "tracing_events"
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class OrgHourUsage:
    """One org's usage in one hour (event time), summed over its live projects."""

    org_id: str
    customer_id: str | None
    traces: int
    observations: int
    scores: int

    def meters(self) -> dict[str, int]:
        """The value of each meter: observations, and traces + observations + scores."""
        return {OBSERVATIONS_METER: self.observations,
                EVENTS_METER: self.traces + self.observations + self.scores}


# (hour_start, hour_end) -> usage of every org with usage in that hour: ONE set-based query.
HourlyUsage = Callable[[datetime, datetime], Iterable[OrgHourUsage]]


@dataclass(frozen=True)
class MeterConfig:
    hours_per_run: int = 4  # ~8 min each at 200 calls/s for 50k orgs
    due_after: timedelta = timedelta(minutes=65)
    max_age: timedelta = timedelta(days=35)  # Stripe refuses older timestamps
    lost_margin: timedelta = timedelta(hours=1)
    batch_size: int = 500  # results saved per fenced transaction
    in_flight_per_thread: int = 2
    retry_batch: int = 10_000  # human-reset failures resent per run
    first_hours: int = 1  # with no watermark yet: report this many latest due hours
    reconcile_days: int = 3  # UTC days a reconciliation looks back over, up to the watermark
    max_corrections: int = 50_000  # corrections one reconciliation run sends; the rest next run
    reconcile_cron: str | None = "50 3 * * *"  # None: no reconciliation schedule

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> MeterConfig:
        """Defaults, with ``ONCELY_STRIPE_HOURS_PER_RUN`` / ``ONCELY_STRIPE_BATCH_SIZE`` /
        ``ONCELY_STRIPE_RECONCILE_DAYS`` / ``ONCELY_STRIPE_RECONCILE_CRON`` (``off``: none)."""
        env = os.environ if environ is None else environ
        cron = env.get("ONCELY_STRIPE_RECONCILE_CRON")
        names = {"hours_per_run": "ONCELY_STRIPE_HOURS_PER_RUN",
                 "batch_size": "ONCELY_STRIPE_BATCH_SIZE",
                 "reconcile_days": "ONCELY_STRIPE_RECONCILE_DAYS"}
        try:
            values: dict[str, Any] = {field: int(env[name])
                                      for field, name in names.items() if env.get(name)}
        except ValueError:
            raise oncely.ConfigError(f"{', '.join(names.values())} must be whole "
                                     "numbers") from None
        if cron:
            values["reconcile_cron"] = None if cron.strip().lower() == "off" else cron
        return cls(**values)


def hour_floor(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def to_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def oldest_sendable(now: datetime, config: MeterConfig) -> datetime:
    """The oldest hour Stripe still takes whole: its end after ``now - max_age + margin``."""
    return hour_floor(now - config.max_age + config.lost_margin)


def meter_events(usage: Iterable[OrgHourUsage], hour_start: datetime) -> Iterator[MeterEvent]:
    """The meter events of one hour, in org order; orgs without a customer id are skipped."""
    start_ms = to_ms(hour_start)
    timestamp = int((hour_start + HOUR).timestamp())
    for row in sorted(usage, key=lambda r: r.org_id):
        if not row.customer_id:
            continue
        for event_name, value in row.meters().items():
            if value > 0:
                yield MeterEvent(event_name, row.org_id, row.customer_id, value, start_ms,
                                 timestamp)


@dataclass(frozen=True)
class Plan:
    """Which hours a run at ``now`` must deal with, given the watermark."""

    lost: list[datetime]
    due: list[datetime]

    @classmethod
    def make(cls, watermark: datetime | None, now: datetime, config: MeterConfig) -> Plan:
        latest_due = hour_floor(now - config.due_after)
        first = watermark + HOUR if watermark is not None else \
            latest_due - (config.first_hours - 1) * HOUR
        oldest_ok = oldest_sendable(now, config)
        lost: list[datetime] = []
        due: list[datetime] = []
        hour = first
        while hour <= latest_due:
            (lost if hour < oldest_ok else due).append(hour)
            hour += HOUR
        return cls(lost, due)
