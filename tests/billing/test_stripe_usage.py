"""Stripe metering over the real data model and a real usage source (DuckDB): one usage query per
hour, summed per org, only orgs with a Stripe customer, projects live during the hour."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import oncely
from oncely.testing import FrozenClock, run_job
from oncely_billing import DuckDBUsageSource, migrations, models
from oncely_billing.demo.stripe_stub import StripeStub
from oncely_billing.meter import MeterConfig
from oncely_billing.stripe_client import StripeSettings
from oncely_billing.stripe_usage import SourceHourlyUsage, install_stripe_usage_metering

HOUR = datetime(2026, 3, 30, 9, tzinfo=UTC)  # the conftest's clock is 10:40: 09:00 is due
HOUR_MS = int(HOUR.timestamp() * 1000)
CREATED = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def stub(clock: FrozenClock) -> Iterator[StripeStub]:
    with StripeStub(clock=clock) as server:
        yield server


def load(app: oncely.App, events: Any) -> None:
    org = models.Organization
    models.add_organizations(app, [
        org(1, "Alpha", CREATED, stripe_customer_id="cus_A"),
        org(2, "Bravo", CREATED),  # no Stripe customer: not metered
        org(3, "Charlie", CREATED, stripe_customer_id="cus_C"),
        org(4, "Delta", CREATED, stripe_customer_id="cus_D"),
        org(5, "Echo", CREATED, stripe_customer_id="cus_E"),
    ])
    project = models.Project
    models.add_projects(app, [
        project(11, 1, "a1", CREATED), project(12, 1, "a2", CREATED),
        project(21, 2, "b1", CREATED),
        project(31, 3, "c1", CREATED, deleted_at=HOUR - timedelta(hours=1)),  # gone before
        project(32, 3, "c2", CREATED, deleted_at=HOUR + timedelta(minutes=30)),  # during
        project(41, 4, "d1", CREATED), project(51, 5, "e1", CREATED),
    ])
    events.add(11, HOUR, traces=5, observations=3, scores=2)
    events.add(12, HOUR, traces=1)
    events.add(21, HOUR, traces=7, observations=7)
    events.add(31, HOUR, traces=9)
    events.add(32, HOUR, traces=4)
    events.add(41, HOUR - timedelta(hours=1), traces=3)  # the hour before
    events.add(41, HOUR + timedelta(hours=1), traces=3)  # the hour after
    events.add(51, HOUR, observations=2)


def test_hourly_usage_from_a_usage_source_is_billed_per_org(
        store_url: str, clock: FrozenClock, events: Any, stub: StripeStub) -> None:
    app = oncely.App(store_url, clock=clock)
    source = DuckDBUsageSource(events.path)
    settings = StripeSettings(api_key="sk_test_oncely", api_base=stub.url, rate=1000,
                              concurrency=2, base_delay=0.01, max_delay=0.05)
    metering = install_stripe_usage_metering(app, source, settings=settings,
                                             config=MeterConfig())
    assert isinstance(metering.usage, SourceHourlyUsage)
    assert metering.task is not None
    migrations.ensure_schema(app)
    load(app, events)

    result = run_job(metering.task)
    assert result.state == oncely.JobState.SUCCEEDED, result.job.errors
    assert source.queries == 1  # one set-based query for the hour, whatever the org count
    billed = {(e.identifier, e.customer_id, e.value) for e in stub.accepted()}
    assert billed == {
        (f"tracing_observations:1:{HOUR_MS}", "cus_A", "3"),
        (f"tracing_events:1:{HOUR_MS}", "cus_A", "11"),
        (f"tracing_events:3:{HOUR_MS}", "cus_C", "4"),
        (f"tracing_observations:5:{HOUR_MS}", "cus_E", "2"),
        (f"tracing_events:5:{HOUR_MS}", "cus_E", "2"),
    }
    assert {e.timestamp for e in stub.accepted()} == {int(HOUR.timestamp()) + 3600}
    assert metering.usage.customers() == {"1": "cus_A", "3": "cus_C", "4": "cus_D",
                                          "5": "cus_E"}
    app.close()
