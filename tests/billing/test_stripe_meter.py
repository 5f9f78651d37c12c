"""The hourly Stripe metering job, end to end: the real SDK against the local Stripe stub, the
job run through oncely.testing on SQLite (and PostgreSQL where ONCELY_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import oncely
from oncely.testing import FrozenClock, assert_enqueued, run_job, wait_until
from oncely_billing import stripe_cli, stripe_store
from oncely_billing.demo.stripe_stub import StripeStub
from oncely_billing.meter import (
    TASK_NAME,
    MeterConfig,
    OrgHourUsage,
    StripeMetering,
    install_stripe_metering,
    to_ms,
)
from oncely_billing.stripe_client import StripeSettings

START = datetime(2026, 3, 10, 12, 5, tzinfo=UTC)  # the :05 run; hour 11:00-12:00 is due
HOUR = timedelta(hours=1)
ORGS = 40


class FakeUsage:
    """Usage of ORGS orgs per hour (every 7th has no Stripe customer); counts every query."""

    def __init__(self, orgs: int = ORGS) -> None:
        self.orgs = orgs
        self.queries: list[datetime] = []
        self.lock = threading.Lock()

    def __call__(self, start: datetime, end: datetime) -> list[OrgHourUsage]:
        assert end - start == HOUR
        with self.lock:
            self.queries.append(start)
        salt = start.hour
        return [
            OrgHourUsage(f"org{i:04d}", None if i % 7 == 0 else f"cus_{i}",
                         traces=(i + salt) % 4, observations=(i * 3 + salt) % 5, scores=i % 2)
            for i in range(self.orgs)
        ]

    def expected_identifiers(self, hour: datetime) -> set[str]:
        ms = to_ms(hour)
        found = set()
        for row in self(hour, hour + HOUR):
            if row.customer_id is None:
                continue
            if row.observations:
                found.add(f"tracing_observations:{row.org_id}:{ms}")
            if row.traces + row.observations + row.scores:
                found.add(f"tracing_events:{row.org_id}:{ms}")
        return found


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/oncely.db"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def stub(clock: FrozenClock) -> Iterator[StripeStub]:
    with StripeStub(clock=clock) as server:
        yield server


class Harness:
    def __init__(self, url: str, clock: FrozenClock, stub: StripeStub, **config: Any) -> None:
        self.clock = clock
        self.stub = stub
        self.usage = FakeUsage()
        self.app = oncely.App(url, clock=clock)
        self.events: list[Any] = []
        self.app.events.subscribe(self.events.append)
        settings = StripeSettings(
            api_key="sk_test_oncely", api_base=stub.url, rate=5000, burst=500, concurrency=6,
            timeout=1.0, attempts=5, base_delay=0.005, max_delay=0.05, breaker_threshold=5,
            breaker_reset=0.3)
        self.metering: StripeMetering = install_stripe_metering(
            self.app, self.usage, settings=settings, config=MeterConfig(**config))
        assert self.metering.task is not None
        self.task = self.metering.task

    def run(self) -> Any:
        return run_job(self.task)

    def watermark(self) -> datetime | None:
        queries = stripe_store.ensure_schema(self.app, 0)
        with self.app.store.transaction() as conn:
            found = queries.watermark(conn)
        return None if found is None else datetime.fromtimestamp(found / 1000, UTC)

    def set_watermark(self, hour: datetime) -> None:
        queries = stripe_store.ensure_schema(self.app, 0)
        with self.app.store.transaction() as conn:
            assert queries.advance_watermark(conn, None, to_ms(hour), 0, 0, 0)

    def event_names(self) -> list[str]:
        return [event.name for event in self.events]

    def assert_billed_once(self, hours: list[datetime]) -> None:
        accepted = self.stub.accepted_identifiers()
        twice = [key for key, count in Counter(accepted).items() if count > 1]
        assert twice == []
        expected = set().union(*(self.usage.expected_identifiers(h) for h in hours))
        assert set(accepted) == expected


@pytest.fixture
def harness(store_url: str, clock: FrozenClock, stub: StripeStub) -> Iterator[Harness]:
    made = Harness(store_url, clock, stub)
    yield made
    made.app.close()


def make(url: str, clock: FrozenClock, stub: StripeStub, **config: Any) -> Harness:
    return Harness(url, clock, stub, **config)


LAST_DUE = START.replace(minute=0) - HOUR  # 11:00


def test_one_run_reports_the_due_hour_with_one_query(harness: Harness) -> None:
    result = harness.run()
    assert result.state == oncely.JobState.SUCCEEDED, result.job.errors
    assert harness.watermark() == LAST_DUE
    assert harness.usage.queries == [LAST_DUE]
    harness.assert_billed_once([LAST_DUE])
    event = harness.stub.accepted()[0]
    assert event.timestamp == int((LAST_DUE + HOUR).timestamp())
    assert event.value.isdigit() and int(event.value) > 0
    assert result.result["behind"] is False


def test_replaying_the_same_hour_three_times_bills_it_once(harness: Harness) -> None:
    for _ in range(3):
        assert harness.run().state == oncely.JobState.SUCCEEDED
    assert harness.usage.queries == [LAST_DUE]  # nothing was due the second and third time
    # Forget everything on our side: the hour is sent again twice, Stripe answers "already
    # exists", and that counts as delivered.
    for _ in range(2):
        with harness.app.store.transaction() as conn:
            conn.execute("DELETE FROM oncely_stripe_watermark")
            conn.execute("DELETE FROM oncely_stripe_deliveries")
        result = harness.run()
        assert result.state == oncely.JobState.SUCCEEDED
        assert result.result["failed"] == 0
        assert result.result["duplicates"] == result.result["events_sent"] > 0
    harness.assert_billed_once([LAST_DUE])
    assert harness.watermark() == LAST_DUE


def test_a_crash_between_two_orgs_resumes_without_double_billing(harness: Harness) -> None:
    harness.set_watermark(LAST_DUE - HOUR)
    harness.clock.advance(2 * 3600)  # three hours due: 11:00, 12:00, 13:00
    client = harness.metering.client()
    real_send = client.send
    first_hour = len(harness.usage.expected_identifiers(LAST_DUE))
    calls = {"n": 0}
    guard = threading.Lock()

    def crashing_send(event: Any) -> Any:
        with guard:
            calls["n"] += 1
            if calls["n"] > first_hour + 10:  # ten events into the second hour
                raise RuntimeError("worker killed")
        return real_send(event)

    client.send = crashing_send  # type: ignore[method-assign]
    crashed = harness.run()
    assert crashed.state == oncely.JobState.RETRYABLE
    assert "worker killed" in crashed.job.errors[-1].message
    assert harness.watermark() == LAST_DUE  # the first hour only
    assert first_hour + 10 <= harness.stub.stats().accepted < first_hour + 30

    client.send = real_send  # type: ignore[method-assign]
    resumed = harness.run()
    assert resumed.state == oncely.JobState.SUCCEEDED
    assert resumed.result["duplicates"] == 0  # saved results: nothing was sent twice
    harness.assert_billed_once([LAST_DUE, LAST_DUE + HOUR, LAST_DUE + 2 * HOUR])
    assert harness.watermark() == LAST_DUE + 2 * HOUR


def test_a_hard_crash_before_saving_is_absorbed_by_stripe_dedup(
        sqlite_url: str, clock: FrozenClock, stub: StripeStub,
        monkeypatch: pytest.MonkeyPatch) -> None:
    harness = make(sqlite_url, clock, stub, batch_size=10)
    real = stripe_store.Queries.record_deliveries
    saves = {"n": 0}

    def dying_save(self: Any, conn: Any, rows: Any) -> None:
        saves["n"] += 1
        if saves["n"] > 2:
            raise SystemExit("process died before saving")  # sent, never recorded
        real(self, conn, rows)

    monkeypatch.setattr(stripe_store.Queries, "record_deliveries", dying_save)
    # The handler dies mid-run (SystemExit): the attempt ends, nothing after the sends saved.
    crashed = harness.run()
    assert crashed.state != oncely.JobState.SUCCEEDED
    assert "SystemExit" in str(crashed.job.errors[-1].message)
    monkeypatch.setattr(stripe_store.Queries, "record_deliveries", real)
    clock.advance(61)  # the dead worker's lease expires; the next run may take the job
    result = harness.run()
    assert result.state == oncely.JobState.SUCCEEDED
    assert result.result["duplicates"] > 0  # Stripe already had the unsaved ones
    harness.assert_billed_once([LAST_DUE])
    harness.app.close()


def test_a_429_storm_slows_down_and_finishes(sqlite_url: str, clock: FrozenClock,
                                             stub: StripeStub) -> None:
    harness = make(sqlite_url, clock, stub)
    stub.configure(throttle_next=40, rate_limit=100)
    result = harness.run()
    assert result.state == oncely.JobState.SUCCEEDED, result.job.errors
    assert stub.stats().rate_limited >= 40
    assert harness.metering.client().stats().retries >= 40
    assert harness.metering.client().breaker.state == "closed"  # 429 is not an outage
    harness.assert_billed_once([LAST_DUE])
    harness.app.close()


def test_an_outage_opens_the_breaker_and_a_later_run_catches_up(harness: Harness) -> None:
    harness.stub.configure(outage=True)
    stalled = harness.run()
    assert stalled.state == oncely.JobState.RETRYABLE
    assert "Stripe unavailable" in stalled.job.errors[-1].message
    assert "metering.stripe.unavailable" in harness.event_names()
    assert harness.metering.client().breaker.state == "open"
    assert harness.watermark() == LAST_DUE - HOUR  # started, nothing reported
    report = stripe_cli.status_report(harness.app)
    assert report["last_run"]["outcome"] == "stripe_unavailable"

    harness.stub.heal()
    harness.clock.advance(3600)  # and an hour later there are two hours to report
    breaker = harness.metering.client().breaker
    wait_until(lambda: time.monotonic() - breaker.opened_at >= breaker.reset_after, timeout=5)
    caught_up = harness.run()
    assert caught_up.state == oncely.JobState.SUCCEEDED, caught_up.job.errors
    assert breaker.state == "closed"
    harness.assert_billed_once([LAST_DUE, LAST_DUE + HOUR])
    assert harness.watermark() == LAST_DUE + HOUR


def test_hours_older_than_35_days_are_lost_loudly(
        store_url: str, clock: FrozenClock, stub: StripeStub,
        caplog: pytest.LogCaptureFixture) -> None:
    harness = make(store_url, clock, stub, hours_per_run=2)
    harness.set_watermark(START.replace(minute=0) - timedelta(days=40))
    with caplog.at_level(logging.ERROR, logger="oncely_billing.stripe"):
        result = harness.run()
    assert result.state == oncely.JobState.SUCCEEDED, result.job.errors
    assert result.result["lost_hours"] == 5 * 24  # Jan 29 13:00 .. Feb 3 12:00
    assert any("LOST" in record.getMessage() for record in caplog.records)
    assert "metering.stripe.hour_lost" in harness.event_names()
    oldest_ok = datetime(2026, 2, 3, 13, tzinfo=UTC)
    assert harness.usage.queries == [oldest_ok, oldest_ok + HOUR]
    limit = (START - timedelta(days=35)).timestamp()
    assert all(event.timestamp >= limit for event in stub.accepted())
    assert harness.watermark() == oldest_ok + HOUR
    with harness.app.store.transaction() as conn:
        lost = conn.execute("SELECT COUNT(*) FROM oncely_stripe_hours WHERE status = 'lost'")
        assert lost.fetchone()[0] == 5 * 24
    # behind: a follow-up run was enqueued, once
    assert result.result["behind"] is True
    assert_enqueued(harness.app, TASK_NAME, state=oncely.JobState.AVAILABLE, count=1)
    harness.app.close()


def test_a_zombie_run_cannot_advance_the_watermark(harness: Harness) -> None:
    client = harness.metering.client()
    real_send = client.send
    takeover: dict[str, Any] = {}
    guard = threading.Lock()

    def send_then_lose_the_lease(event: Any) -> Any:
        with guard:
            now = "started" not in takeover and client.stats().calls >= 10
            if now:
                takeover["started"] = True
        if now:  # A pauses here; its 60 s lease expires and B takes the job over
            harness.clock.advance(61)
            takeover["result"] = run_job(harness.task)
        return real_send(event)

    client.send = send_then_lose_the_lease  # type: ignore[method-assign]
    zombie = harness.run()
    successor = takeover["result"]
    assert successor.state == oncely.JobState.SUCCEEDED
    assert zombie.outcome.abandoned  # FenceRejected: A recorded nothing, not even its outcome
    assert "fence.rejected" in harness.event_names()
    with harness.app.store.transaction() as conn:
        row = conn.execute("SELECT job_id FROM oncely_stripe_watermark").fetchone()
    assert row[0] == successor.job.id
    assert harness.watermark() == LAST_DUE
    harness.assert_billed_once([LAST_DUE])  # A's late sends were "already exists"


def test_refused_events_are_recorded_shown_and_resent_after_a_reset(
        sqlite_url: str, clock: FrozenClock, stub: StripeStub) -> None:
    harness = make(sqlite_url, clock, stub)
    stub.configure(reject_customers={"cus_3": (400, "resource_missing"),
                                     "cus_5": (404, "resource_missing")})
    refused = {key for key in harness.usage.expected_identifiers(LAST_DUE)
               if ":org0003:" in key or ":org0005:" in key}
    first = harness.run()
    assert first.state == oncely.JobState.SUCCEEDED
    assert first.result["failed"] == len(refused) > 0
    assert first.result["failed_codes"] == {"resource_missing": len(refused)}
    assert harness.watermark() == LAST_DUE  # failures do not hold the hour back

    group = click.Group("metering")
    stripe_cli.register(group)
    runner = CliRunner()
    shown = runner.invoke(group, ["status"], obj=harness.app)
    assert shown.exit_code == 0, shown.output
    assert f"{len(refused)} failed with code resource_missing" in shown.output
    assert "watermark (last fully reported hour): 2026-03-10T11:00:00+00:00" in shown.output
    listed = runner.invoke(group, ["stripe-failures"], obj=harness.app)
    assert "org0003" in listed.output and "org0005" in listed.output

    second = harness.run()  # nothing reset: nothing resent
    assert second.result["events_sent"] == 0
    stub.heal()
    reset = runner.invoke(group, ["stripe-retry-failures", "--code", "resource_missing",
                                  "--yes"], obj=harness.app)
    assert f"{len(refused)} failed meter event(s)" in reset.output
    third = harness.run()
    assert third.result["delivered"] == len(refused)
    harness.assert_billed_once([LAST_DUE])
    assert stripe_cli.status_report(harness.app)["failures"] == []
    harness.app.close()


def test_the_schedule_is_hourly_at_five_past_and_singleton(
        sqlite_url: str, clock: FrozenClock, stub: StripeStub) -> None:
    harness = make(sqlite_url, clock, stub)
    spec = harness.app.schedules["metering-stripe-usage"]
    assert spec.cron == "5 * * * *" and spec.tz == "UTC"
    assert harness.task.options.singleton is True
    report = stripe_cli.status_report(harness.app)
    assert report["watermark"] is None and report["backlog_hours"] == 1
    harness.app.close()


def test_commands_find_the_app_through_the_metering_groups_runtime(
        sqlite_url: str, clock: FrozenClock, stub: StripeStub) -> None:
    harness = make(sqlite_url, clock, stub)
    assert harness.run().state == oncely.JobState.SUCCEEDED

    class Runtime:  # what `oncely metering` puts in ctx.obj: .runtime().app and .as_json
        as_json = True

        def runtime(self) -> Any:
            return harness.metering

    @click.group()
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.obj = Runtime()

    stripe_cli.register(group)
    shown = CliRunner().invoke(group, ["status"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["watermark"] == LAST_DUE.isoformat() and report["backlog_hours"] == 0
    assert report["last_run"]["outcome"] == "ok"
    harness.app.close()
