"""Billing figures in Prometheus text and JSON, computed from the store."""

from __future__ import annotations

import pytest

import oncely
from oncely_billing.web import routes

from .conftest import Events, load_scenario, make_app, run_thresholds


@pytest.mark.filterwarnings("ignore:Using `httpx`")
def test_billing_metrics_after_a_run(
    store_url: str, clock: oncely.FrozenClock, events: Events
) -> None:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    app = make_app(store_url, None, clock, events)
    load_scenario(app, events)
    run_thresholds(app)
    with TestClient(Starlette(routes=routes(app))) as client:
        figures = client.get("/api/billing/metrics").json()
        text = client.get("/metrics/billing").text
    assert figures["orgs"] == {"WARNING": 2, "BLOCKED": 1}
    assert figures["emails"] == {"sent": 0, "pending": 3, "failing": 0, "no_recipients": 0}
    assert figures["free_tier"]["org_rows_written"] == 5
    assert figures["stripe"] is None  # not installed without a Stripe key
    assert 'oncely_billing_orgs{state="BLOCKED"} 1.0' in text
    assert 'oncely_billing_emails{status="pending"} 3.0' in text
    assert "oncely_billing_org_rows_written 5.0" in text
    assert 'oncely_billing_last_run_duration_seconds{job="free-tier-thresholds"}' in text
    app.close()


def test_stripe_figures(sqlite_url: str) -> None:
    from oncely.testing import FrozenClock
    from oncely_billing.demo.stripe_stub import StripeStub
    from oncely_billing.metrics import registry, snapshot

    from .test_stripe_meter import START, Harness

    clock = FrozenClock(START)
    with StripeStub(clock=clock) as stub:
        harness = Harness(sqlite_url, clock, stub)
        assert harness.run().state == oncely.JobState.SUCCEEDED
        stripe = snapshot(harness.app)["stripe"]
        assert stripe["events"]["delivered"] == stub.stats().accepted > 0
        assert stripe["events"]["failed"] == 0 and stripe["last_run"]["outcome"] == "ok"
        assert stripe["watermark_lag_seconds"] == 5 * 60  # 12:05 now, 11:00-12:00 reported
        from prometheus_client import generate_latest

        text = generate_latest(registry(harness.app)).decode()
        assert "oncely_billing_stripe_watermark_lag_seconds 300.0" in text
        harness.app.close()
