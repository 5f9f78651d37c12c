"""Billing figures: one read model (:func:`snapshot`) for Prometheus, the API and the CLI.

Computed from the job store when asked (like the engine's fleet metrics), so every process that
serves them shows the same numbers:

====================================================  =====  =====================================
metric                                                type   labels
====================================================  =====  =====================================
oncely_billing_org_rows_written                       gauge  (the last free-tier run's writes)
oncely_billing_emails                                 gauge  status (sent, pending, failing,
                                                             no_recipients); failing = pending
                                                             whose last send failed
oncely_billing_orgs                                   gauge  state (WARNING, BLOCKED)
oncely_billing_stripe_events                          gauge  status (delivered, duplicate,
                                                             failed, lost)
oncely_billing_stripe_watermark_lag_seconds           gauge  now - end of the last reported hour
oncely_billing_last_run_duration_seconds              gauge  job (free-tier-thresholds,
                                                             stripe-usage)
====================================================  =====  =====================================

Served by the billing plugin at ``GET /metrics/billing`` (Prometheus text) and
``GET /api/billing/metrics`` (JSON), and printed by ``oncely metering metrics``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

import oncely
from oncely_billing import db, migrations
from oncely_billing.thresholds import LAST_RUN_KEY

STRIPE_TASK = "metering.stripe_usage"


def snapshot(app: oncely.App) -> dict[str, Any]:
    """Every billing figure, JSON-safe."""
    migrations.ensure_schema(app)
    dialect = db.sql_dialect(app)
    with db.connection(app) as conn:
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
                      "org_rows_written": last_run["org_rows_written"] if last_run else None},
        "emails": emails,
        "orgs": {"WARNING": 0, "BLOCKED": 0, **{str(s): int(c) for s, c in states}},
        "stripe": _stripe(app) if STRIPE_TASK in app.tasks else None,
    }


def _stripe(app: oncely.App) -> dict[str, Any]:
    from oncely_billing import stripe_store
    from oncely_billing.meter import to_ms

    now = app.clock.now()
    queries = stripe_store.ensure_schema(app, to_ms(now))
    with db.connection(app) as conn:
        counts = queries.all(conn, "billing_stripe_delivery_counts")
        mark = queries.one(conn, "stripe_watermark_get", stream=stripe_store.STREAM)
        last = queries.one(conn, "stripe_run_last")
    events = {"delivered": 0, "duplicate": 0, "failed": 0, "lost": 0}
    events.update({str(status): int(count) for status, count in counts})
    lag = None if mark is None else now.timestamp() - (int(mark[0]) / 1000 + 3600)
    duration = None
    if last is not None and last[3] is not None:
        duration = (int(last[3]) - int(last[2])) / 1000
    return {"events": events, "watermark_lag_seconds": lag,
            "last_run": None if last is None else {"outcome": last[4], "seconds": duration}}


class BillingCollector(Collector):
    def __init__(self, app: oncely.App) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = snapshot(self.app)
        last = figures["free_tier"]["last_run"] or {}
        rows = GaugeMetricFamily("oncely_billing_org_rows_written",
                                 "Organization rows the last free-tier run wrote")
        rows.add_metric([], float(last.get("org_rows_written", 0)))
        yield rows
        yield _labelled("oncely_billing_emails", "Threshold emails by status", "status",
                        figures["emails"])
        yield _labelled("oncely_billing_orgs", "Organizations by threshold state", "state",
                        figures["orgs"])
        durations = GaugeMetricFamily("oncely_billing_last_run_duration_seconds",
                                      "Duration of the last run of each billing job",
                                      labels=["job"])
        if "duration" in last:
            durations.add_metric(["free-tier-thresholds"], float(last["duration"]))
        stripe = figures["stripe"]
        if stripe is not None:
            yield _labelled("oncely_billing_stripe_events", "Stripe meter events by status",
                            "status", stripe["events"])
            lag = GaugeMetricFamily("oncely_billing_stripe_watermark_lag_seconds",
                                    "Seconds since the end of the last hour reported to Stripe")
            if stripe["watermark_lag_seconds"] is not None:
                lag.add_metric([], float(stripe["watermark_lag_seconds"]))
            yield lag
            seconds = (stripe["last_run"] or {}).get("seconds")
            if seconds is not None:
                durations.add_metric(["stripe-usage"], float(seconds))
        yield durations


def _labelled(name: str, doc: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], float(value))
    return family


def registry(app: oncely.App) -> CollectorRegistry:
    found = CollectorRegistry(auto_describe=False)
    found.register(BillingCollector(app))
    return found
