"""What the deployment that ran before the simulated day left behind, in each phase's store.

A billing fleet is never started on an empty history: its schedules exist, the free-tier rollup
holds the current cycles, the emails of crossed thresholds went out and the last hour was billed.
Starting the day without them would make its first hour a backfill (a 30-day recount, a burst of
emails) that no steady hour has, so :func:`run` does them first, on a frozen clock:

* an hour before the day, the two billing schedules are registered (their slots of the day's
  first hour belong to their history, and to the watchdog's expectations);
* half an hour before, the free-tier job's full recount runs, the notification jobs it queued are
  sent (to the demo's SMTP capture, before the day's count starts), and the last complete hour is
  billed to a Stripe stub of its own.

Both runs go through tasks of their own (``sim.initial-*``) calling the billing jobs' code, so the
schedules' execution counts — the watchdog's and the report's — hold only the day's runs.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import oncely
from oncely_billing import metering_of
from oncely_billing.demo.plan import DEMO_STRIPE_KEY, STRIPE_RATE, Plan, scale_timeouts
from oncely_billing.demo.stripe_stub import StripeStub
from oncely_billing.stripe_client import StripeSettings
from oncely_billing.stripe_usage import install_stripe_usage_metering
from oncely_billing.thresholds import run_free_tier

DECLARED_BEFORE = timedelta(hours=1)
RAN_BEFORE = timedelta(minutes=30)
RECOUNT_TASK = "sim.initial-recount"
BILLING_TASK = "sim.initial-billing"
FINISHED = ("succeeded", "failed", "cancelled")
NOTIFY_TIMEOUT = 120.0  # real seconds the recount's emails may take


def run(plan: Plan, app: oncely.App, clock: oncely.FrozenClock) -> dict[str, Any]:
    """Leave ``app``'s store as the deployment before the day would have; returns what it did.
    ``clock`` must stand at ``plan.origin - DECLARED_BEFORE``."""
    stub = StripeStub(clock=clock, host="127.0.0.1").start()
    try:
        settings = StripeSettings(api_key=DEMO_STRIPE_KEY, api_base=stub.url, rate=STRIPE_RATE)
        stripe = install_stripe_usage_metering(app, metering_of(app).source, settings=settings,
                                               reconcile_cron=None)
        app.register_schedules()
        scale_timeouts(app, plan.speed)  # the notification jobs the recount enqueues
        clock.set(plan.origin - RAN_BEFORE)
        recount = run_task(app, RECOUNT_TASK, lambda ctx: run_free_tier(
            ctx, metering_of(app), full=True))
        emails = deliver_notifications(app)
        billing = run_task(app, BILLING_TASK, stripe.run)
    finally:
        stub.stop()
    return {"recount": recount, "emails_sent": emails, "billing": billing}


def run_task(app: oncely.App, name: str, body: Any) -> dict[str, Any]:
    """Run ``body(ctx)`` once now, as the job of a task of its own named ``name``."""

    def handler(ctx: oncely.JobContext) -> Any:
        return body(ctx)

    task = app.task(name=name, queue="sim")(handler)
    job = app.run_now(task, by="demo")  # under its lease, in this process
    if job.state != oncely.JobState.SUCCEEDED:
        error = job.errors[-1].message if job.errors else job.state
        raise oncely.OncelyError(f"{name} failed before the day started: {error}")
    return dict(job.result or {})


def deliver_notifications(app: oncely.App) -> int:
    """Send the emails the recount queued; returns how many notification jobs ran."""
    queue = metering_of(app).settings.notify_queue

    def waiting() -> int:
        counts = app.read.job_counts().get(queue, {})
        return sum(count for state, count in counts.items() if state not in FINISHED)

    pending = waiting()
    if pending:
        worker = app.worker(concurrency=4, queues=[queue], maintenance=False).start()
        try:
            deadline = time.monotonic() + NOTIFY_TIMEOUT
            while waiting():
                if time.monotonic() > deadline:
                    raise oncely.OncelyError("the recount's notifications were not sent within "
                                             f"{NOTIFY_TIMEOUT:g} s")
                time.sleep(0.02)
        finally:
            worker.stop(timeout=30)
    return pending
