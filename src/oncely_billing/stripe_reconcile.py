"""Late usage billed once: the reconciliation of Stripe metering with the usage source.

The hourly job reports hour ``[H, H+1)`` at ``H + 65 min``. Usage for H that reaches the usage
source later (by event time it belongs to H) is in no meter event: the reconciliation finds it
and sends the difference as a **correction**, one more meter event for the same org, meter and
hour (Stripe meters sum), stamped like the hour's own event (``timestamp`` = the hour's end).

A run (the metering task with ``reconcile=True``: nightly at 03:50 UTC, or ``oncely metering
reconcile``; it shares the hourly job's singleton lease, so one sender talks to Stripe at a time):

1. **Window**: the last ``days`` UTC days up to the watermark, only hours the job reported.
2. **Compare** what is on record with the usage source now: per org and day first (one source
   query for the window), then per hour for the days that differ (one source query per such day).
   *On record* is every delivery row of that org, meter and hour, whatever its status (delivered,
   duplicate, sending, refused, lost): each holds its value under an identifier of its own.
3. **Write down, then send**: each positive difference within Stripe's window becomes a delivery
   row ``sending`` with identifier ``{event}:{org}:{hour_ms}:c{n}``, n = corrections on record for
   that org, meter and hour + 1, written in a fenced transaction *before* anything is sent. Then
   every row still ``sending`` is sent with the value on record and its answer saved (fenced).

Why no difference is billed twice: the identifier is a function of what is on record, so a
replay (a second run, a retried attempt) finds the correction on record and computes no new
difference, and two runs that compute the same difference produce the same identifier. A crash
after Stripe took a correction but before its answer was saved leaves the row ``sending``: the
next run sends the *same identifier with the same value* (not a value recomputed from a source
that may have changed), and Stripe answers "already exists". A zombie (lease lost) cannot write
the rows, so it never sends a correction of its own; what it may still send was written down by
the run it lost to, under the same identifiers. Further late usage is a new difference against a
record that now includes the first correction: ``c2``.

Differences never sent, reported instead (the run's result, its row in
``oncely_stripe_reconciliations``, and an ERROR log): ``past_window`` — the hour is past Stripe's
35-day limit; ``over_billed`` — more on record than the source counts now (deleted events or
projects): Stripe meters only add, so no correction can take units back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import oncely
from oncely_billing import db, stripe_fleet, stripe_store
from oncely_billing.meter_plan import HOUR, OrgHourUsage, from_ms, oldest_sendable, to_ms
from oncely_billing.resilience import CircuitOpen
from oncely_billing.stripe_client import (
    MeterEvent,
    Outcome,
    SendResult,
    StripeRejectedAccount,
    StripeUnavailable,
)
from oncely_billing.stripe_deliver import Delivery, deliver

if TYPE_CHECKING:
    from oncely_billing.meter import StripeMetering

log = logging.getLogger("oncely_billing.stripe")

DAY = timedelta(days=1)
DAY_MS = 86_400_000
DETAILS_KEPT = 500  # differences kept on the run's row and in its result
Key = tuple[str, str, int]  # (org_id, event_name, hour_start_ms)


@dataclass(frozen=True)
class Difference:
    """One org, meter and hour whose usage now differs from what is on record."""

    org_id: str
    customer_id: str | None
    event_name: str
    hour_start_ms: int
    source: int  # units the usage source counts now
    on_record: int  # units in delivery rows (hour's own event and corrections)
    corrections: int  # correction rows on record
    kind: str  # late | past_window | over_billed

    @property
    def units(self) -> int:
        return self.source - self.on_record

    def correction(self) -> MeterEvent:
        return MeterEvent(self.event_name, self.org_id, self.customer_id or "", self.units,
                          self.hour_start_ms, self.hour_start_ms // 1000 + 3600,
                          self.corrections + 1)

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["hour"] = from_ms(self.hour_start_ms).isoformat()
        found["units"] = self.units
        if self.kind == "late":
            found["identifier"] = self.correction().identifier
        return found


@dataclass
class Figures:
    """What one run found and did; the columns of ``oncely_stripe_reconciliations``."""

    orgs_checked: int = 0
    late: int = 0
    late_units: int = 0
    corrections_sent: int = 0
    refused: int = 0
    past_window: int = 0
    past_window_units: int = 0
    over_billed: int = 0
    over_billed_units: int = 0

    def count(self, differences: Iterable[Difference]) -> None:
        for found in differences:
            setattr(self, found.kind, getattr(self, found.kind) + 1)
            units = f"{found.kind}_units"
            setattr(self, units, getattr(self, units) + abs(found.units))


def window(watermark: datetime, days: int) -> tuple[datetime, datetime]:
    """``days`` UTC days up to the end of the watermark's hour (the last reported one)."""
    end = watermark + HOUR
    start = watermark.replace(hour=0) - (days - 1) * DAY
    return start, end


def _expected(buckets: Mapping[int, Iterable[OrgHourUsage]]) -> dict[Key, tuple[str, int]]:
    found: dict[Key, tuple[str, int]] = {}
    for bucket_ms, rows in buckets.items():
        for row in rows:
            if row.customer_id:
                for event_name, value in row.meters().items():
                    if value:
                        found[(row.org_id, event_name, bucket_ms)] = (row.customer_id, value)
    return found


def find_differences(app: oncely.App, usage: Any, queries: stripe_store.Queries,
                     start: datetime, end: datetime,
                     oldest_ok: datetime) -> tuple[list[Difference], int]:
    """Every (org, meter, reported hour) in ``[start, end)`` whose usage differs from the
    record, and the number of orgs compared. ``usage`` is the job's :data:`HourlyUsage`; one with
    a ``buckets(start, end, granularity)`` method (:class:`SourceHourlyUsage`) is compared per day
    first, any other is asked hour by hour."""
    start_ms, end_ms = to_ms(start), to_ms(end)
    with db.connection(app) as conn:
        reported = {int(row[0]) for row in queries.all(
            conn, "stripe_hours_reported", start_ms=start_ms, end_ms=end_ms)}
    if not reported:
        return [], 0
    start = max(start, from_ms(min(reported)).replace(hour=0))
    start_ms = to_ms(start)
    expected: dict[Key, tuple[str, int]] = {}
    on_record: dict[Key, tuple[int, int]] = {}
    buckets = getattr(usage, "buckets", None)
    if callable(buckets):
        daily = _expected(buckets(start, end, "day"))
        with db.connection(app) as conn:
            sent_days = {(str(org), str(event), int(day) * DAY_MS): int(units)
                         for org, event, day, units in queries.all(
                             conn, "stripe_sent_by_day", start_ms=start_ms, end_ms=end_ms)}
        orgs = {key[0] for key in daily} | {key[0] for key in sent_days}
        days: dict[int, set[str]] = {}
        for key in daily.keys() | sent_days.keys():
            if daily.get(key, ("", 0))[1] != sent_days.get(key, 0):
                days.setdefault(key[2], set()).add(key[0])
        for day_ms, day_orgs in sorted(days.items()):
            day_start = max(from_ms(day_ms), start)
            day_end = min(from_ms(day_ms) + DAY, end)
            hourly = _expected(buckets(day_start, day_end, "hour"))
            expected.update({key: value for key, value in hourly.items() if key[0] in day_orgs})
            on_record.update(_on_record(app, queries, "stripe_sent_by_hour", to_ms(day_start),
                                        to_ms(day_end), sorted(day_orgs)))
    else:
        hour = start
        while hour < end:
            if to_ms(hour) in reported:
                expected.update(_expected({to_ms(hour): usage(hour, hour + HOUR)}))
            hour += HOUR
        on_record = _on_record(app, queries, "stripe_sent_by_hour_all", start_ms, end_ms, None)
        orgs = {key[0] for key in expected} | {key[0] for key in on_record}
    return _compare(expected, on_record, reported, to_ms(oldest_ok)), len(orgs)


def _on_record(app: oncely.App, queries: stripe_store.Queries, query: str, start_ms: int,
               end_ms: int, orgs: list[str] | None) -> dict[Key, tuple[int, int]]:
    params: dict[str, Any] = {"start_ms": start_ms, "end_ms": end_ms}
    if orgs is not None:  # a JSON array for SQLite, an array for PostgreSQL
        params["orgs"] = json.dumps(orgs) if queries.dialect == "sqlite" else orgs
    with db.connection(app) as conn:
        rows = queries.all(conn, query, **params)
    return {(str(org), str(event), int(hour)): (int(units), int(corrections))
            for org, event, hour, units, corrections in rows}


def _compare(expected: Mapping[Key, tuple[str, int]], on_record: Mapping[Key, tuple[int, int]],
             reported: set[int], oldest_ok_ms: int) -> list[Difference]:
    found = []
    for key in sorted(expected.keys() | on_record.keys(), key=lambda k: (k[2], k[0], k[1])):
        org_id, event_name, hour_ms = key
        if hour_ms not in reported:
            continue
        customer, source = expected.get(key, (None, 0))
        units, corrections = on_record.get(key, (0, 0))
        if source == units:
            continue
        kind = ("over_billed" if source < units else
                "past_window" if hour_ms < oldest_ok_ms else "late")
        found.append(Difference(org_id, customer, event_name, hour_ms, source, units,
                                corrections, kind))
    return found


@dataclass
class _Reconciliation:
    metering: StripeMetering
    ctx: oncely.JobContext
    queries: stripe_store.Queries
    days: int
    dry_run: bool
    figures: Figures = field(default_factory=Figures)
    delivery: Delivery = field(default_factory=Delivery)
    started_ms: int = 0
    start: datetime | None = None
    end: datetime | None = None
    differences: list[Difference] = field(default_factory=list)
    left_for_next_run: int = 0

    def execute(self) -> dict[str, Any]:
        app, now = self.metering.app, self.ctx.now()
        self.started_ms = to_ms(now)
        with db.connection(app) as conn:
            mark = self.queries.watermark(conn)
        if mark is None:
            return self.result("nothing_reported")
        self.start, self.end = window(from_ms(mark), self.days)
        self.differences, self.figures.orgs_checked = find_differences(
            app, self.metering.usage, self.queries, self.start, self.end,
            oldest_sendable(now, self.metering.config))
        self.figures.count(self.differences)
        if self.dry_run:
            return self.result("dry_run")
        self.record("running")
        try:
            self._write_down([d for d in self.differences if d.kind == "late"])
            self._send_open()
        except oncely.FenceRejected:
            raise  # a zombie writes nothing, not even its outcome
        except (StripeUnavailable, StripeRejectedAccount) as exc:
            self.record("stripe_unavailable", str(exc))
            from oncely_billing.meter import MeteringStalled

            raise MeteringStalled(f"Stripe unavailable; corrections written down are sent by "
                                  f"the next reconciliation: {exc}") from exc
        except BaseException as exc:
            self.record("error", f"{type(exc).__name__}: {exc}")
            raise
        self._report()
        unbilled = self.figures.past_window or self.figures.over_billed or self.figures.refused
        outcome = "behind" if self.left_for_next_run else "differences" if unbilled else "ok"
        self.record(outcome)
        return self.result(outcome)

    def _write_down(self, late: list[Difference]) -> None:
        """The corrections as ``sending`` rows, before anything is sent (fenced)."""
        now_ms = to_ms(self.ctx.now())
        todo = late[: self.metering.config.max_corrections]
        self.left_for_next_run = len(late) - len(todo)
        rows = [stripe_store.sending_row(found.correction(), self.ctx.job_id, now_ms)
                for found in todo]
        for chunk in db.chunks(rows, self.metering.config.batch_size):
            with self.ctx.fenced() as conn:
                self.queries.write_down(conn, chunk)

    def _send_open(self) -> None:
        """Send every correction written down and not yet answered, with its value on record."""
        config, now = self.metering.config, self.ctx.now()
        with db.connection(self.metering.app) as conn:
            rows = self.queries.all(conn, "stripe_corrections_open",
                                    limit=config.max_corrections)
        if not rows:
            return
        oldest_ok_ms = to_ms(oldest_sendable(now, config))
        events: list[MeterEvent] = []
        lost: list[MeterEvent] = []
        for _identifier, hour_ms, org_id, event_name, customer, value, correction in rows:
            event = MeterEvent(str(event_name), str(org_id), str(customer), int(value),
                               int(hour_ms), int(hour_ms) // 1000 + 3600, int(correction))
            (lost if event.hour_start_ms < oldest_ok_ms else events).append(event)
        if lost:
            self._save([SendResult(e, Outcome.FAILED, 0, "too_old", "past Stripe's 35-day "
                                   "limit") for e in lost], status="lost")
            self.figures.past_window += len(lost)
            self.figures.past_window_units += sum(e.value for e in lost)
        if events:
            self._deliver(events)

    def _deliver(self, events: list[MeterEvent]) -> None:
        app, ctx = self.metering.app, self.ctx
        client = self.metering.client()
        try:
            stripe_fleet.before_run(app, client, ctx.now())
        except CircuitOpen as exc:
            raise StripeUnavailable(str(exc)) from exc

        def before_send() -> None:
            if ctx.lease_lost.is_set():
                ctx.check_fence()
            ctx.raise_if_cancelled()

        threads = client.settings.concurrency
        try:
            with ThreadPoolExecutor(threads, thread_name_prefix="stripe-correct") as pool:
                summary = deliver(events, client.send, pool, self._save,
                                  in_flight=threads * self.metering.config.in_flight_per_thread,
                                  batch_size=self.metering.config.batch_size,
                                  before_send=before_send)
        finally:
            stripe_fleet.after_run(app, client, ctx.now())
        self.delivery.merge(summary)
        self.figures.corrections_sent += summary.delivered + summary.duplicates
        self.figures.refused += summary.failed

    def _save(self, results: list[SendResult], status: str | None = None) -> None:
        now_ms = to_ms(self.ctx.now())
        rows = [stripe_store.delivery_row(r, self.ctx.job_id, now_ms, status) for r in results]
        with self.ctx.fenced() as conn:
            self.queries.record_deliveries(conn, rows)

    def _report(self) -> None:
        figures = self.figures
        if figures.past_window:
            log.error("Stripe reconciliation: %d late usage difference(s), %d units, are past "
                      "Stripe's 35-day limit: never billed", figures.past_window,
                      figures.past_window_units,
                      extra={"event": "metering.stripe.late_usage_lost"})
        if figures.over_billed:
            log.warning("Stripe reconciliation: %d org-hour(s) billed %d units more than the "
                        "usage source counts now", figures.over_billed,
                        figures.over_billed_units,
                        extra={"event": "metering.stripe.over_billed"})
        self.metering.app.events.emit("metering.stripe.reconciled", job_id=self.ctx.job_id,
                                      **asdict(figures))

    def record(self, outcome: str, note: str | None = None) -> None:
        details = [d.as_dict() for d in self.differences[:DETAILS_KEPT]]
        if note:
            details.insert(0, {"note": note})
        params = {"job_id": self.ctx.job_id, "attempt": self.ctx.attempt,
                  "started_at_ms": self.started_ms, "window_start_ms": to_ms(self.start or
                                                                             self.ctx.now()),
                  "window_end_ms": to_ms(self.end or self.ctx.now()), "mode": "send",
                  "outcome": outcome, "details": json.dumps(details), **asdict(self.figures),
                  "finished_at_ms": None if outcome == "running" else to_ms(self.ctx.now())}
        try:
            with self.ctx.fenced() as conn:
                self.queries.run(conn, "stripe_reconciliation_record", **params)
        except oncely.FenceRejected:
            if outcome == "running":
                raise
            log.warning("reconciliation outcome not recorded: this attempt lost its fence")

    def result(self, outcome: str) -> dict[str, Any]:
        return {"outcome": outcome, "dry_run": self.dry_run, "days": self.days,
                "window": None if self.start is None or self.end is None
                else [self.start.isoformat(), self.end.isoformat()],
                **asdict(self.figures), "delivered": self.delivery.delivered,
                "duplicates": self.delivery.duplicates, "failed_codes":
                self.delivery.failed_codes, "left_for_next_run": self.left_for_next_run,
                "differences": [d.as_dict() for d in self.differences[:DETAILS_KEPT]]}


def reconcile(metering: StripeMetering, ctx: oncely.JobContext, *, days: int,
              dry_run: bool = False) -> dict[str, Any]:
    """One reconciliation attempt (see the module docstring); ``dry_run`` writes and sends
    nothing."""
    if days < 1:
        raise oncely.ConfigError(f"reconciliation days must be at least 1, not {days}")
    queries = stripe_store.ensure_schema(metering.app)
    return _Reconciliation(metering, ctx, queries, days, dry_run).execute()
