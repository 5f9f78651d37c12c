"""The hourly job that reports each organization's usage to Stripe meters, never twice.

Schedule: ``5 * * * *`` UTC, singleton, overlap ``skip``. Hour ``[H, H+1)`` is **due** at
``H + 65 min``; a run reports the due hours after the watermark, oldest first, at most
``hours_per_run`` of them, and enqueues a follow-up (``unique_key`` naming the new watermark) when
more are due. Per hour:

1. one set-based usage query for the whole hour (:data:`HourlyUsage`), not one per org;
2. two meter events per org that has a Stripe customer id: ``tracing_observations``
   (observations, if > 0) and ``tracing_events`` (traces + observations + scores, if > 0), with
   ``identifier = "{event}:{org_id}:{hour_start_ms}"``, ``timestamp`` = the hour's end (seconds),
   the value as a whole-number string, ``payload.stripe_customer_id``;
3. events already answered for that hour (a crashed or stopped run sent them) are skipped; the
   new ones are written down (``sending``, with their value) before any is sent, then go through
   :func:`~oncely_billing.stripe_deliver.deliver` with those written down and never answered
   (sent again with the value on record), results saved in batches under the job's fence;
4. only when every event of the hour is ``delivered``, ``duplicate`` or ``failed`` does one fenced
   transaction advance the watermark by exactly that hour (compare-and-set) and record the hour.
   A run that lost its fence cannot commit that transaction: a zombie never moves the watermark.

**Time base: event time** — what the usage sources count by (see
:mod:`oncely_billing.stripe_usage`, which builds :data:`HourlyUsage` from a ``UsageSource``),
and what the free-tier job counts, so both billing jobs agree on an org's usage in an hour. The 65
minutes leave time for the hour's events to be ingested; an event ingested later than that misses
its hour's report and is billed by the reconciliation (nightly at 03:50 UTC, the same task with
``reconcile=True``) as a correction stamped at the same hour
(:mod:`oncely_billing.stripe_reconcile`).

Hours whose end is older than Stripe's 35-day limit (less ``lost_margin``, so no event of an hour
is refused halfway) are never sent: each is recorded ``lost`` in ``oncely_stripe_hours``, logged at
ERROR and emitted as ``metering.stripe.hour_lost``, and the watermark moves past it.

Failures: a 4xx for one org is recorded with Stripe's error code and does not hold the hour back;
it is sent again only after a human resets it (``oncely metering stripe-retry-failures``), at the
start of the next run. Stripe down (5xx/timeouts outlasting the retries, or the breaker open):
the run saves what was delivered, records ``stripe_unavailable``, emits the anomaly
``metering.stripe.unavailable`` and fails its attempt; the task's retry policy and the next hourly
run resume exactly where it stopped.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import oncely
from oncely_billing import db, stripe_fleet, stripe_store
from oncely_billing.meter_plan import (
    EVENTS_METER,
    HOUR,
    OBSERVATIONS_METER,
    HourlyUsage,
    MeterConfig,
    OrgHourUsage,
    Plan,
    from_ms,
    hour_floor,
    meter_events,
    oldest_sendable,
    to_ms,
)
from oncely_billing.resilience import CircuitOpen
from oncely_billing.stripe_client import (
    MeterEvent,
    Outcome,
    SendResult,
    StripeMeterClient,
    StripeRejectedAccount,
    StripeSettings,
    StripeUnavailable,
)
from oncely_billing.stripe_deliver import Delivery, deliver
from oncely_billing.stripe_store import delivery_row

__all__ = ["EVENTS_METER", "OBSERVATIONS_METER", "RECONCILE_SCHEDULE", "SCHEDULE_NAME",
           "TASK_NAME", "HourlyUsage", "MeterConfig", "MeteringStalled", "OrgHourUsage", "Plan",
           "StripeMetering", "from_ms", "hour_floor", "install_stripe_metering", "meter_events",
           "to_ms"]

log = logging.getLogger("oncely_billing.stripe")

TASK_NAME = "metering.stripe_usage"
SCHEDULE_NAME = "metering-stripe-usage"
RECONCILE_SCHEDULE = "metering-stripe-reconcile"


class MeteringStalled(oncely.OncelyError):
    """Stripe is unavailable; the run stopped after saving what it delivered."""


class StripeMetering:
    """The job's code and its dependencies; :meth:`install` registers task and schedule."""

    def __init__(self, app: oncely.App, usage: HourlyUsage, *,
                 config: MeterConfig | None = None, settings: StripeSettings | None = None,
                 client: StripeMeterClient | None = None) -> None:
        self.app = app
        self.usage = usage
        self.config = config or MeterConfig.from_env()
        self._settings = settings
        self._client = client
        if client is not None and client.breaker.on_change is None:
            client.breaker.on_change = self._breaker_changed
        self._client_lock = threading.Lock()
        self.task: oncely.Task | None = None

    def install(self, *, cron: str = "5 * * * *", queue: str = "billing",
                reconcile_cron: str | None = "") -> oncely.Task:
        """The task, its hourly schedule and (unless ``reconcile_cron`` is None; default: the
        config's, 03:50 UTC) the nightly reconciliation: the same task with ``reconcile=True``,
        so the one singleton lease keeps a single sender to Stripe in the whole fleet."""
        if reconcile_cron == "":
            reconcile_cron = self.config.reconcile_cron
        register = self.app.task(name=TASK_NAME, queue=queue, singleton=True, timeout=3 * 3600,
                                 retry=oncely.RetryPolicy(attempts=3, backoff="exponential",
                                                    base_delay=60.0, max_delay=900.0,
                                                    jitter=True))
        task: oncely.Task = register(self.run)
        self.app.schedule(SCHEDULE_NAME, task, cron=cron, tz="UTC", overlap="skip",
                          catch_up="latest")
        if reconcile_cron is not None:
            self.app.schedule(RECONCILE_SCHEDULE, task, cron=reconcile_cron, tz="UTC",
                              args={"reconcile": True}, overlap="skip", catch_up="latest")
        self.task = task
        return task

    def client(self) -> StripeMeterClient:
        with self._client_lock:
            if self._client is None:
                settings = self._settings or StripeSettings.from_env()
                self._client = StripeMeterClient(settings, on_breaker_change=self._breaker_changed)
            return self._client

    def _breaker_changed(self, previous: str, state: str) -> None:
        if state == "open":
            log.error("Stripe circuit breaker opened: Stripe is failing; calls paused",
                      extra={"event": "metering.stripe.breaker_open"})
        self.app.events.emit("metering.stripe.breaker", previous=previous, state=state)
        if self._client is not None:  # hand the state on to whichever worker runs next
            stripe_fleet.breaker_changed(self.app, self._client, state, self.app.clock.now())

    # the job -----------------------------------------------------------------------------
    def run(self, ctx: oncely.JobContext, reconcile: bool = False, days: int = 0,
            dry_run: bool = False) -> dict[str, Any]:
        """Report the due hours; with ``reconcile=True``, reconcile the last ``days`` UTC days
        instead (:mod:`oncely_billing.stripe_reconcile`; ``dry_run``: report, write nothing)."""
        if reconcile:
            from oncely_billing.stripe_reconcile import reconcile as run_reconcile

            return run_reconcile(self, ctx, days=days or self.config.reconcile_days,
                                 dry_run=dry_run)
        queries = stripe_store.ensure_schema(self.app, to_ms(ctx.now()))
        run = _Run(self, ctx, queries)
        with ctx.fenced() as conn:
            queries.run_started(conn, ctx.job_id, ctx.attempt, to_ms(ctx.now()))
        try:
            result = run.execute()
        except oncely.FenceRejected:
            raise  # nothing may be written under a lost fence, not even the run's outcome
        except StripeUnavailable as exc:
            run.finish("stripe_unavailable", str(exc))
            log.error("Stripe unavailable: metering stopped and will resume where it left off "
                      "(%s)", exc, extra={"event": "metering.stripe.unavailable"})
            self.app.events.emit("metering.stripe.unavailable", job_id=ctx.job_id,
                                 error=str(exc), watermark=run.watermark_iso())
            raise MeteringStalled(f"Stripe unavailable; resumes after "
                                  f"{run.watermark_iso()}: {exc}") from exc
        except StripeRejectedAccount as exc:
            run.finish("stripe_rejected_account", str(exc))
            raise MeteringStalled(str(exc)) from exc
        except BaseException as exc:
            run.finish("error", f"{type(exc).__name__}: {exc}")
            raise
        run.finish("behind" if result["behind"] else "ok", None)
        return result


class _Run:
    """One attempt of the job: its plan, its pool, its totals."""

    def __init__(self, metering: StripeMetering, ctx: oncely.JobContext,
                 queries: stripe_store.Queries) -> None:
        self.metering = metering
        self.config = metering.config
        self.ctx = ctx
        self.queries = queries
        self.totals = Delivery()
        self.hours_done: list[str] = []
        self.watermark: datetime | None = None

    def watermark_iso(self) -> str | None:
        return None if self.watermark is None else self.watermark.isoformat()

    def execute(self) -> dict[str, Any]:
        with db.connection(self.metering.app) as conn:
            found = self.queries.watermark(conn)
        self.watermark = None if found is None else from_ms(found)
        if self.watermark is None:
            self._start_watermark()
        plan = Plan.make(self.watermark, self.ctx.now(), self.config)
        client = self.metering.client()
        try:
            stripe_fleet.before_run(self.metering.app, client, self.ctx.now())
        except CircuitOpen as exc:
            raise StripeUnavailable(str(exc)) from exc
        threads = client.settings.concurrency
        try:
            with ThreadPoolExecutor(threads, thread_name_prefix="stripe-send") as pool:
                self._resend_reset_failures(client, pool)
                if plan.lost:
                    self._record_lost(plan.lost)
                todo = plan.due[: self.config.hours_per_run]
                for hour in todo:
                    self._report_hour(hour, client, pool)
        finally:
            stripe_fleet.after_run(self.metering.app, client, self.ctx.now())
        behind = len(plan.due) > len(todo)
        if behind:
            self._enqueue_follow_up()
        return {"hours_reported": self.hours_done, "lost_hours": len(plan.lost),
                "events_sent": self.totals.sent, "delivered": self.totals.delivered,
                "duplicates": self.totals.duplicates, "failed": self.totals.failed,
                "failed_codes": self.totals.failed_codes, "behind": behind,
                "backlog_hours": len(plan.due) - len(todo), "watermark": self.watermark_iso()}

    def finish(self, outcome: str, note: str | None) -> None:
        try:
            with self.ctx.fenced() as conn:
                self.queries.run_finished(conn, self.ctx.job_id, self.ctx.attempt,
                                          to_ms(self.ctx.now()), outcome,
                                          len(self.hours_done), self.totals.sent, note)
        except oncely.FenceRejected:
            log.warning("run outcome not recorded: this attempt lost its fence")

    # one hour ----------------------------------------------------------------------------
    def _report_hour(self, hour: datetime, client: StripeMeterClient,
                     pool: ThreadPoolExecutor) -> None:
        hour_ms = to_ms(hour)
        events = list(meter_events(self.metering.usage(hour, hour + HOUR), hour))
        pending = self._write_down(hour_ms, events)
        summary = self._deliver(pending, client, pool)
        now_ms = to_ms(self.ctx.now())
        with self.ctx.fenced() as conn:
            counts = self.queries.hour_counts(conn, hour_ms)
            expected = None if self.watermark is None else to_ms(self.watermark)
            if not self.queries.advance_watermark(conn, expected, hour_ms, now_ms,
                                                  self.ctx.job_id, self.ctx.fence):
                raise oncely.OncelyError(
                    f"Stripe metering watermark moved away from {self.watermark_iso()} during "
                    "this run; stopping without reporting further hours")
            self.queries.record_hour(conn, hour_ms, "reported", counts, self.ctx.job_id, now_ms)
        self.watermark = hour
        self.hours_done.append(hour.isoformat())
        if summary.failed:
            log.warning("Stripe refused %d meter events of hour %s: %s", summary.failed,
                        hour.isoformat(), summary.failed_codes,
                        extra={"event": "metering.stripe.events_failed"})
        self.metering.app.events.emit(
            "metering.stripe.hour_reported", hour=hour.isoformat(), events=len(events),
            sent=summary.sent, delivered=summary.delivered, duplicates=summary.duplicates,
            failed=summary.failed, skipped=len(events) - len(pending))

    def _write_down(self, hour_ms: int, events: list[MeterEvent]) -> list[MeterEvent]:
        """The events of the hour to send: those written down earlier and never answered (with
        their value on record), then the new ones, written down first (fenced)."""
        with db.connection(self.metering.app) as conn:
            rows = self.queries.hour_records(conn, hour_ms)
        again = [MeterEvent(str(name), str(org), str(customer), int(value), hour_ms,
                            hour_ms // 1000 + 3600, int(correction))
                 for _id, status, org, name, customer, value, correction in rows
                 if status == "sending"]
        recorded = {str(row[0]) for row in rows}
        fresh = [event for event in events if event.identifier not in recorded]
        now_ms = to_ms(self.ctx.now())
        for chunk in db.chunks(fresh, self.config.batch_size):
            with self.ctx.fenced() as conn:
                self.queries.write_down(conn, [stripe_store.sending_row(event, self.ctx.job_id,
                                                                        now_ms)
                                               for event in chunk])
        return again + fresh

    def _deliver(self, events: list[MeterEvent], client: StripeMeterClient,
                 pool: ThreadPoolExecutor) -> Delivery:
        ctx = self.ctx

        def save(results: list[SendResult]) -> None:
            now_ms = to_ms(ctx.now())
            rows = [delivery_row(result, ctx.job_id, now_ms) for result in results]
            with ctx.fenced() as conn:
                self.queries.record_deliveries(conn, rows)

        def before_send() -> None:
            if ctx.lease_lost.is_set():
                ctx.check_fence()
            ctx.raise_if_cancelled()

        summary = deliver(events, client.send, pool, save,
                          in_flight=client.settings.concurrency * self.config.in_flight_per_thread,
                          batch_size=self.config.batch_size, before_send=before_send)
        self.totals.merge(summary)
        return summary

    # lost hours, reset failures, follow-up -----------------------------------------------
    def _record_lost(self, hours: list[datetime]) -> None:
        now_ms = to_ms(self.ctx.now())
        with self.ctx.fenced() as conn:
            expected = None if self.watermark is None else to_ms(self.watermark)
            if not self.queries.advance_watermark(conn, expected, to_ms(hours[-1]), now_ms,
                                                  self.ctx.job_id, self.ctx.fence):
                raise oncely.OncelyError("Stripe metering watermark moved during this run")
            for hour in hours:
                self.queries.record_hour(conn, to_ms(hour), "lost", {}, self.ctx.job_id, now_ms,
                                         "older than Stripe's 35-day limit: never sent")
        self.watermark = hours[-1]
        log.error("Stripe metering LOST %d hour(s) from %s to %s: older than Stripe's 35-day "
                  "limit, never billed", len(hours), hours[0].isoformat(), hours[-1].isoformat(),
                  extra={"event": "metering.stripe.hour_lost"})
        self.metering.app.events.emit("metering.stripe.hour_lost", hours=len(hours),
                                      first=hours[0].isoformat(), last=hours[-1].isoformat())

    def _start_watermark(self) -> None:
        """First run ever: start just before the ``first_hours`` latest due hours, and keep that
        start even if this run stops early (a later run must not skip ahead)."""
        plan = Plan.make(None, self.ctx.now(), self.config)
        start = (plan.due or plan.lost)[0] - HOUR
        with self.ctx.fenced() as conn:
            self.queries.advance_watermark(conn, None, to_ms(start), to_ms(self.ctx.now()),
                                           self.ctx.job_id, self.ctx.fence)
            found = self.queries.watermark(conn)
        self.watermark = None if found is None else from_ms(found)

    def _resend_reset_failures(self, client: StripeMeterClient, pool: ThreadPoolExecutor) -> None:
        with db.connection(self.metering.app) as conn:
            rows = self.queries.retry_due(conn, self.config.retry_batch)
        if not rows:
            return
        oldest_ok = oldest_sendable(self.ctx.now(), self.config)
        lookup = getattr(self.metering.usage, "customers", None)
        current: dict[str, str] = lookup() if callable(lookup) else {}  # a fixed customer id
        events, lost = [], []
        for _identifier, hour_ms, org_id, event_name, customer_id, value, correction in rows:
            customer = current.get(str(org_id), str(customer_id))
            event = MeterEvent(str(event_name), str(org_id), customer, int(value),
                               int(hour_ms), int(hour_ms) // 1000 + 3600, int(correction))
            if from_ms(int(hour_ms)) < oldest_ok:
                lost.append(event)
            else:
                events.append(event)
        if lost:
            now_ms = to_ms(self.ctx.now())
            with self.ctx.fenced() as conn:
                self.queries.record_deliveries(conn, [
                    delivery_row(SendResult(e, Outcome.FAILED, 0, "too_old", "past Stripe's "
                                            "35-day limit"), self.ctx.job_id, now_ms, "lost")
                    for e in lost])
            log.error("Stripe metering LOST %d reset meter events: older than 35 days",
                      len(lost), extra={"event": "metering.stripe.events_lost"})
        self._deliver(events, client, pool)

    def _enqueue_follow_up(self) -> None:
        task = self.metering.task or self.metering.app.get_task(TASK_NAME)
        key = f"{TASK_NAME}:after:{self.watermark_iso()}"
        with self.ctx.fenced() as conn:
            self.metering.app.enqueue_job(task, {}, unique_key=key, connection=conn)
        log.info("Stripe metering is behind: follow-up run enqueued",
                 extra={"event": "metering.stripe.behind"})


def install_stripe_metering(app: oncely.App, usage: HourlyUsage, **options: Any) -> StripeMetering:
    """Register the Stripe metering task and its hourly schedule on ``app``."""
    cron = options.pop("cron", "5 * * * *")
    reconcile_cron = options.pop("reconcile_cron", "")  # "": the config's
    metering = StripeMetering(app, usage, **options)
    metering.install(cron=cron, reconcile_cron=reconcile_cron)
    return metering
