"""Billing figures: one read model (:func:`snapshot`) for Prometheus, the dashboard, the API and
the CLI.

Read from the job store when asked (like the engine's fleet metrics), so every process shows the
same numbers, and only read: nothing is created or migrated (a store without the billing tables
has no billing figures). Each scrape runs a catalog lookup, the state row of the last run, index
ranges (the Stripe events of 24 usage hours, the unsent ones, the last attempts of each task) and
two scans (organizations by state: one row per organization; the notification outbox: one row per
organization, cycle and threshold crossed). ``bench/billing_metrics.py`` measures a scrape: at
50,000 organizations, 200,000 outbox rows and 1,000,000 Stripe events (5,000 billable
organizations, 200 hours) about 0.17 s on PostgreSQL and 0.28 s on SQLite (2 shared cores), most
of it the outbox scan and the 24 hours of events; ``oncely_addon_collector_duration_seconds``
shows it in production.

The fleet ``/metrics`` of the dashboard serves them (``oncely.metrics`` entry point
:func:`collector`):

=================================================  =====  ======================================
metric                                             type   labels
=================================================  =====  ======================================
oncely_billing_org_rows_written                    gauge  (the last free-tier run's writes)
oncely_billing_emails                              gauge  status (outbox rows: sent, pending,
                                                          no_recipients)
oncely_billing_emails_failing                      gauge  (pending ones whose last send failed)
oncely_billing_orgs                                gauge  state (WARNING, BLOCKED)
oncely_billing_stripe_events                       gauge  status (delivered, duplicate, failed,
                                                          retry, lost), window (24h of usage
                                                          hours)
oncely_billing_stripe_events_unsent                gauge  status (failed = refused by Stripe,
                                                          retry, lost; whatever their hour)
oncely_billing_stripe_watermark_lag_seconds        gauge  (now - end of the last reported hour)
oncely_billing_last_run_duration_seconds           gauge  task (the last ended attempt)
oncely_billing_last_run_finished_timestamp_seconds gauge  task
=================================================  =====  ======================================

The free-tier families and the Stripe ones each appear once their tables exist. Every family is
a gauge: each is a count of rows now (or a figure of the last run), which may go down; use
``delta()``, not ``rate()``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

import oncely
from oncely_billing import db
from oncely_billing.notify import SEND_TASK
from oncely_billing.stripe_store import STREAM
from oncely_billing.sweep import SWEEP_TASK
from oncely_billing.thresholds import LAST_RUN_KEY, THRESHOLDS_TASK

STRIPE_TASK = "metering.stripe_usage"
TASKS = (THRESHOLDS_TASK, SEND_TASK, SWEEP_TASK, STRIPE_TASK)  # and any other metering.* task
EVENTS_WINDOW = timedelta(hours=24)
EVENT_STATUSES = ("delivered", "duplicate", "failed", "retry", "lost")
UNSENT = ("failed", "retry", "lost")
HOUR_S = 3600


def snapshot(app: oncely.App) -> dict[str, Any]:
    """Every billing figure, JSON-safe. ``installed`` is False on a store without billing
    tables; the free-tier figures (``free_tier``, ``emails``, ``orgs``) and ``stripe`` are None
    while their own tables are absent."""
    now = app.clock.now()
    dialect = db.sql_dialect(app)
    with db.connection(app) as conn:
        tables = {str(row[0]) for row in db.fetch_all(conn, dialect, "billing_tables_present")}
        free = _free_tier(conn, dialect) if "metering_notification_outbox" in tables else None
        stripe = _stripe(conn, dialect, now.timestamp()) if {
            "oncely_stripe_deliveries", "oncely_stripe_watermark"} <= tables else None
        if stripe is not None:
            stripe["reconciliation"] = _reconciliation(conn, dialect) if (
                "oncely_stripe_reconciliations" in tables) else None
    if free is None and stripe is None:
        return {"installed": False}
    return {"installed": True, **(free or dict.fromkeys(("free_tier", "emails", "orgs"))),
            "stripe": stripe, "last_runs": last_runs(app)}


def _free_tier(conn: Any, dialect: str) -> dict[str, Any]:
    outbox = db.fetch_all(conn, dialect, "billing_outbox_counts")
    states = db.fetch_all(conn, dialect, "billing_org_states")
    row = db.fetch_one(conn, dialect, "state_get", {"key": LAST_RUN_KEY})
    emails = {"sent": 0, "pending": 0, "failing": 0, "no_recipients": 0}
    for status, count, failing in outbox:
        emails[str(status)] = int(count)
        if status == "pending":
            emails["failing"] = int(failing or 0)
    last_run = json.loads(row[0]) if row else None
    return {
        "free_tier": {"last_run": last_run,
                      "org_rows_written": last_run.get("org_rows_written") if last_run else None},
        "emails": emails,
        "orgs": {"WARNING": 0, "BLOCKED": 0, **{str(s): int(c) for s, c in states}},
    }


def _stripe(conn: Any, dialect: str, now: float) -> dict[str, Any]:
    since_ms = int((now - EVENTS_WINDOW.total_seconds()) // HOUR_S * HOUR_S * 1000)
    window = db.fetch_all(conn, dialect, "billing_stripe_events_since", {"since_ms": since_ms})
    unsent = db.fetch_all(conn, dialect, "billing_stripe_events_unsent")
    mark = db.fetch_one(conn, dialect, "billing_stripe_watermark", {"stream": STREAM})
    events = dict.fromkeys(EVENT_STATUSES, 0) | {str(s): int(c) for s, c in window}
    return {
        "window_hours": int(EVENTS_WINDOW.total_seconds() // HOUR_S),
        "events": events,
        "unsent": dict.fromkeys(UNSENT, 0) | {str(s): int(c) for s, c in unsent},
        "watermark_lag_seconds": None if mark is None else now - (int(mark[0]) / 1000 + HOUR_S),
    }


RECONCILED = ("late", "corrections_sent", "refused", "past_window", "over_billed")


def _reconciliation(conn: Any, dialect: str) -> dict[str, Any] | None:
    """The last finished reconciliation's differences (None before the first)."""
    row = db.fetch_one(conn, dialect, "billing_last_reconciliation")
    if row is None:
        return None
    return {**{name: int(value) for name, value in zip(RECONCILED, row[:5], strict=True)},
            "finished_at": int(row[5]) / 1000}


def last_runs(app: oncely.App) -> dict[str, dict[str, Any]]:
    """The last ended attempt of each billing task (from the engine's record of attempts: one
    index range per task), by task."""
    tasks = sorted({*TASKS, *(name for name in app.tasks if name.startswith("metering."))})
    found: dict[str, dict[str, Any]] = {}
    for task in tasks:
        for attempt in app.read.executions(task=task, limit=5):  # newest first
            if attempt.ended_at is None or attempt.outcome == "released":
                continue
            found[task] = {
                "job_id": attempt.job_id, "attempt": attempt.attempt, "outcome": attempt.outcome,
                "started_at": attempt.started_at.isoformat(),
                "finished_at": attempt.ended_at.isoformat(),
                "seconds": (attempt.ended_at - attempt.started_at).total_seconds()}
            break
    return found


def history(app: oncely.App, limit: int = 10) -> list[dict[str, Any]]:
    """The last successful free-tier runs, newest first, with the figures each returned."""
    rows = []
    for job in app.read.jobs(task=THRESHOLDS_TASK, state=oncely.JobState.SUCCEEDED, limit=limit):
        result = job.result if isinstance(job.result, dict) else {}
        timings = result.get("timings")
        timings = timings if isinstance(timings, dict) else {}
        rows.append({
            "job_id": job.id, "finished_at": job.finished_at.isoformat() if job.finished_at
            else None, "mode": result.get("mode"),
            "org_rows_written": result.get("org_rows_written"),
            "notifications": result.get("notifications"), "blocked": result.get("blocked"),
            "unblocked": result.get("unblocked"), "seconds": timings.get("total")})
    return rows


class BillingCollector(Collector):
    """The billing families (see the module's table); building it touches no store."""

    def __init__(self, app: oncely.App) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = snapshot(self.app)
        if not figures["installed"]:
            return
        if figures["emails"] is not None:
            yield from _free_tier_families(figures)
        if figures["stripe"] is not None:
            yield from _stripe_families(figures["stripe"])
        yield from _run_families(figures["last_runs"])


def _free_tier_families(figures: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    rows = GaugeMetricFamily("oncely_billing_org_rows_written",
                             "Organization rows the last free-tier run wrote")
    written = figures["free_tier"]["org_rows_written"]
    if written is not None:
        rows.add_metric([], float(written))
    yield rows
    emails = figures["emails"]
    yield _labelled("oncely_billing_emails", "Threshold notifications in the outbox, by status",
                    "status", {k: v for k, v in emails.items() if k != "failing"})
    yield GaugeMetricFamily("oncely_billing_emails_failing",
                            "Pending notifications whose last send attempt failed",
                            value=emails["failing"])
    yield _labelled("oncely_billing_orgs", "Organizations by threshold state", "state",
                    figures["orgs"])


def _stripe_families(stripe: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    window = f"{stripe['window_hours']}h"
    events = GaugeMetricFamily("oncely_billing_stripe_events",
                               "Stripe meter events of the usage hours in the window, by status",
                               labels=["status", "window"])
    for status, count in sorted(stripe["events"].items()):
        events.add_metric([status, window], count)
    yield events
    yield _labelled("oncely_billing_stripe_events_unsent",
                    "Stripe meter events refused (failed), waiting to be resent (retry) or too "
                    "old to send (lost)", "status", stripe["unsent"])
    lag = GaugeMetricFamily("oncely_billing_stripe_watermark_lag_seconds",
                            "Seconds since the end of the last hour reported to Stripe")
    if stripe["watermark_lag_seconds"] is not None:
        lag.add_metric([], float(stripe["watermark_lag_seconds"]))
    yield lag
    checked = stripe.get("reconciliation")
    if checked is not None:
        yield _labelled("oncely_billing_reconciliation",
                        "The last reconciliation of Stripe's totals with the usage source: "
                        "late differences, corrections sent, refused, past Stripe's window, "
                        "over-billed", "figure", {name: checked[name] for name in RECONCILED})


def _run_families(runs: dict[str, dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
    seconds = GaugeMetricFamily("oncely_billing_last_run_duration_seconds",
                                "Duration of the last ended attempt of each billing task",
                                labels=["task"])
    finished = GaugeMetricFamily("oncely_billing_last_run_finished_timestamp_seconds",
                                 "When the last attempt of each billing task ended",
                                 labels=["task"])
    for task, run in sorted(runs.items()):
        seconds.add_metric([task], run["seconds"])
        finished.add_metric([task], datetime.fromisoformat(run["finished_at"]).timestamp())
    yield from (seconds, finished)


def _labelled(name: str, doc: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], float(value))
    return family


def collector(app: oncely.App) -> BillingCollector:
    """The ``oncely.metrics`` entry point: the billing families in the fleet ``/metrics``."""
    return BillingCollector(app)


def registry(app: oncely.App) -> CollectorRegistry:
    found = CollectorRegistry(auto_describe=False)
    found.register(BillingCollector(app))
    return found
