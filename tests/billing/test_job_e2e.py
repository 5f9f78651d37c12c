"""The free-tier job end to end: every store x every usage source, on a scenario with known
answers (see conftest.scenario_orgs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import oncely
from oncely.testing import assert_enqueued
from oncely_billing import metering_of, models
from oncely_billing.notify import SEND_TASK, outbox_rows
from oncely_billing.thresholds import THRESHOLDS_SCHEDULE

from .conftest import (
    EXPECTED_AFTER_FIRST_RUN,
    EXPECTED_NOTIFICATIONS,
    NOW,
    Events,
    run_thresholds,
    state_of,
)


def test_first_run_applies_every_rule_and_reruns_change_nothing(
    scenario_app: oncely.App,
) -> None:
    result = run_thresholds(scenario_app)

    assert result["mode"] == "full"
    assert result["source_queries"] == 1
    assert state_of(scenario_app) == EXPECTED_AFTER_FIRST_RUN
    notified = {(row["org_id"], row["threshold"], row["kind"]) for row in outbox_rows(scenario_app)}
    assert notified == EXPECTED_NOTIFICATIONS
    jobs = assert_enqueued(scenario_app, SEND_TASK, count=3)
    assert {job.args["outbox_id"] for job in jobs} == {
        row["id"] for row in outbox_rows(scenario_app)}
    # only organizations whose usage or state changed were written (Delta: paid, Golf: idle)
    assert result["org_rows_written"] == 5
    assert result["blocked"] == 1 and result["notifications"] == 3
    alpha = models.org_status(scenario_app, 1)
    assert (alpha.cycle.start, alpha.cycle.end) == (datetime(2026, 2, 28).date(),
                                                    datetime(2026, 3, 31).date())

    again = run_thresholds(scenario_app)  # the same hour again: idempotent, incremental
    assert again["mode"] == "incremental"
    assert again["source_queries"] == 1
    assert again["org_rows_written"] == 0 and again["rollup_upserted"] == 0
    assert again["notifications"] == 0
    assert state_of(scenario_app) == EXPECTED_AFTER_FIRST_RUN
    assert_enqueued(scenario_app, SEND_TASK, count=3)


def test_new_usage_crosses_the_next_threshold_and_cycles_reset(
    store_url: str, clock: oncely.FrozenClock, events: Events
) -> None:
    from .conftest import load_scenario, make_app

    app = make_app(store_url, None, clock, events)
    load_scenario(app, events)
    run_thresholds(app)
    clock.advance(timedelta(hours=1))
    events.add(11, NOW + timedelta(minutes=5), traces=450, spread=timedelta(minutes=10))
    result = run_thresholds(app)
    assert result["org_rows_written"] == 1
    assert state_of(app)[1] == (1050, "WARNING")
    assert (1, 1000, "usage_warning") in {
        (r["org_id"], r["threshold"], r["kind"]) for r in outbox_rows(app)}

    models.delete_project(app, 21)  # Bravo's only project: its March 20 usage must go
    clock.set(datetime(2026, 3, 31, 0, 35, tzinfo=UTC))  # Alpha's anchor 31: a new cycle
    result = run_thresholds(app)
    assert result["mode"] == "incremental"  # today and yesterday only
    alpha = models.org_status(app, 1)
    assert (alpha.cycle_usage, alpha.threshold_state) == (0, None)
    assert alpha.recorded_cycle_start == datetime(2026, 3, 31).date()
    assert state_of(app)[2] == (2100, "WARNING")  # March 20 is outside the incremental window

    clock.set(datetime(2026, 3, 31, 3, 35, tzinfo=UTC))  # the nightly reconcile
    result = run_thresholds(app)
    assert result["mode"] == "full" and result["rollup_deleted"] == 1
    assert state_of(app)[2] == (0, None)
    assert run_thresholds(app)["mode"] == "incremental"  # once a day
    app.close()


def test_schedule_is_hourly_at_35_singleton_skip(
    sqlite_url: str, clock: oncely.FrozenClock, events: Events
) -> None:
    from .conftest import make_app

    app = make_app(sqlite_url, None, clock, events)
    spec = app.schedules[THRESHOLDS_SCHEDULE]
    assert (spec.cron, spec.tz, spec.overlap) == ("35 * * * *", "UTC", oncely.Overlap.SKIP)
    assert metering_of(app).thresholds_task.options.singleton is True
