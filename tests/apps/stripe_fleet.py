"""An app whose only job is Stripe metering, for the fleet test: several worker processes, one
Stripe stub (``ONCELY_STRIPE_API_BASE``), 30 billable orgs (60 meter events) per hour."""

from __future__ import annotations

import os
from datetime import datetime

import oncely
from oncely_billing.meter import MeterConfig, OrgHourUsage, StripeMetering, install_stripe_metering
from oncely_billing.stripe_client import StripeSettings

RATE = 40.0  # calls per second the whole fleet may make
BURST = 2.0
ORGS = 30
HOURS = 4  # due hours reported, one per run (each run enqueues its follow-up)


def usage(start: datetime, end: datetime) -> list[OrgHourUsage]:
    return [OrgHourUsage(f"org{i:03d}", f"cus_{i}", 1, 1 + i % 3, 0) for i in range(ORGS)]


def make(url: str, api_base: str) -> tuple[oncely.App, StripeMetering]:
    app = oncely.App(url)
    settings = StripeSettings(api_key="sk_test_fleet", api_base=api_base, rate=RATE,
                              burst=BURST, concurrency=8, timeout=5.0, attempts=3,
                              base_delay=0.01, max_delay=0.1)
    metering = install_stripe_metering(app, usage, settings=settings,
                                       config=MeterConfig(hours_per_run=1, first_hours=HOURS))
    return app, metering


app, metering = make(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db",
                     os.environ.get("ONCELY_STRIPE_API_BASE") or "http://127.0.0.1:9")
