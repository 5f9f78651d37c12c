"""Late usage billed once: the reconciliation sends what arrived after an hour was reported as a
correction, once, across replays, a crash between sending and saving, and a zombie; hours past
Stripe's window are reported, never sent. The real SDK against the local Stripe stub, the job
run through oncely.testing on SQLite (and PostgreSQL where ONCELY_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import oncely
from oncely.testing import FrozenClock, run_job
from oncely_billing import DuckDBUsageSource, migrations, models, reconcile_cli, stripe_store
from oncely_billing import metrics as billing_metrics
from oncely_billing.demo.stripe_stub import StripeStub
from oncely_billing.errors import UsageSourceError, UsageSourceUnavailable
from oncely_billing.meter import (
    RECONCILE_SCHEDULE,
    MeterConfig,
    OrgHourUsage,
    StripeMetering,
    install_stripe_metering,
    to_ms,
)
from oncely_billing.stripe_client import StripeSettings
from oncely_billing.stripe_usage import install_stripe_usage_metering

START = datetime(2026, 3, 10, 12, 5, tzinfo=UTC)  # the :05 run; hour 11:00-12:00 is due
HOUR = timedelta(hours=1)
H = START.replace(minute=0) - HOUR  # 11:00, reported by the first run
H_MS = to_ms(H)
ORGS = 12


class LateUsage:
    """Usage of ORGS orgs per hour (org0000 has no Stripe customer), plus late arrivals."""

    def __init__(self) -> None:
        self.late: dict[tuple[str, datetime], list[int]] = {}
        self.calls: list[datetime] = []
        self.hook: Any = None

    def add_late(self, org: str, hour: datetime, traces: int = 0, observations: int = 0) -> None:
        found = self.late.setdefault((org, hour), [0, 0])
        found[0] += traces
        found[1] += observations

    def __call__(self, start: datetime, end: datetime) -> list[OrgHourUsage]:
        self.calls.append(start)
        if self.hook is not None:
            self.hook(start)
        rows = []
        for i in range(ORGS):
            org = f"org{i:04d}"
            traces, observations = self.late.get((org, start), [0, 0])
            rows.append(OrgHourUsage(org, None if i == 0 else f"cus_{i}", traces + i % 3 + 1,
                                     observations + i % 2, 1))
        return rows

    def expected(self, hour: datetime) -> dict[tuple[str, str, int], int]:
        """What the meters should sum per (customer, meter, timestamp) for the hour now."""
        found = {}
        stamp = int((hour + HOUR).timestamp())
        for row in self(hour, hour + HOUR):
            if row.customer_id:
                for meter, value in row.meters().items():
                    if value:
                        found[(row.customer_id, meter, stamp)] = value
        self.calls.pop()
        return found


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def stub(clock: FrozenClock) -> Iterator[StripeStub]:
    with StripeStub(clock=clock) as server:
        yield server


def settings(stub: StripeStub) -> StripeSettings:
    return StripeSettings(api_key="sk_test_oncely", api_base=stub.url, rate=5000, burst=500,
                          concurrency=4, timeout=1.0, attempts=3, base_delay=0.005,
                          max_delay=0.05, breaker_threshold=5, breaker_reset=0.3)


class Harness:
    def __init__(self, url: str, clock: FrozenClock, stub: StripeStub) -> None:
        self.clock, self.stub = clock, stub
        self.usage = LateUsage()
        self.app = oncely.App(url, clock=clock)
        self.events: list[Any] = []
        self.app.events.subscribe(self.events.append)
        self.metering: StripeMetering = install_stripe_metering(
            self.app, self.usage, settings=settings(stub), config=MeterConfig(batch_size=4))
        assert self.metering.task is not None
        self.task = self.metering.task

    def report_hour(self) -> None:
        result = run_job(self.task)
        assert result.state == oncely.JobState.SUCCEEDED, result.job.errors

    def reconcile(self, **args: Any) -> Any:
        return run_job(self.task, reconcile=True, **args)

    def assert_billed_exactly(self, hours: list[datetime]) -> None:
        accepted = self.stub.accepted_identifiers()
        assert [key for key, n in Counter(accepted).items() if n > 1] == []
        expected: dict[tuple[str, str, int], int] = {}
        for hour in hours:
            expected.update(self.usage.expected(hour))
        assert self.stub.billed() == expected

    def open_corrections(self) -> int:
        queries = stripe_store.ensure_schema(self.app)
        with self.app.transaction() as tx:
            row = queries.one(tx.connection, "stripe_corrections_open_count")
        return 0 if row is None else int(row[0])


@pytest.fixture
def harness(store_url: str, clock: FrozenClock, stub: StripeStub) -> Iterator[Harness]:
    made = Harness(store_url, clock, stub)
    made.report_hour()
    yield made
    made.app.close()


@pytest.fixture
def sqlite_harness(tmp_path: Path, clock: FrozenClock, stub: StripeStub) -> Iterator[Harness]:
    made = Harness(f"sqlite:///{tmp_path}/oncely.db", clock, stub)
    made.report_hour()
    yield made
    made.app.close()


def test_late_usage_is_corrected_once_across_replays(harness: Harness) -> None:
    reported = len(harness.stub.accepted())
    harness.usage.add_late("org0001", H, observations=3)
    harness.usage.add_late("org0002", H, traces=2)
    harness.usage.add_late("org0000", H, traces=9)  # no Stripe customer: never metered
    harness.clock.advance(6 * 3600)

    first = harness.reconcile()
    assert first.state == oncely.JobState.SUCCEEDED, first.job.errors
    assert first.result["outcome"] == "ok"
    assert first.result["late"] == 3 and first.result["corrections_sent"] == 3
    sent = {e.identifier: int(e.value) for e in harness.stub.accepted()[reported:]}
    assert sent == {f"tracing_observations:org0001:{H_MS}:c1": 3,
                    f"tracing_events:org0001:{H_MS}:c1": 3,
                    f"tracing_events:org0002:{H_MS}:c1": 2}
    stamps = {e.timestamp for e in harness.stub.accepted()}
    assert stamps == {int((H + HOUR).timestamp())}  # billed at the hour it belongs to
    harness.assert_billed_exactly([H])

    for _ in range(2):  # replays: nothing changed, nothing sent
        again = harness.reconcile()
        assert again.state == oncely.JobState.SUCCEEDED
        assert again.result["late"] == 0 and again.result["corrections_sent"] == 0
    assert len(harness.stub.accepted()) == reported + 3
    assert harness.stub.stats().duplicates == 0

    harness.usage.add_late("org0001", H, observations=4)  # later still: a second correction
    later = harness.reconcile()
    assert later.result["late"] == 2
    assert {e.identifier for e in harness.stub.accepted()[reported + 3:]} == {
        f"tracing_observations:org0001:{H_MS}:c2", f"tracing_events:org0001:{H_MS}:c2"}
    harness.assert_billed_exactly([H])
    assert "metering.stripe.reconciled" in [event.name for event in harness.events]
    with harness.app.transaction() as tx:
        outcomes = [r[0] for r in tx.execute(
            "SELECT outcome FROM oncely_stripe_reconciliations ORDER BY started_at_ms, job_id")]
    assert outcomes == ["ok"] * 4
    # The last run's figures reach monitoring (the fleet /metrics reads this snapshot).
    figures = billing_metrics.snapshot(harness.app)["stripe"]["reconciliation"]
    assert {k: figures[k] for k in billing_metrics.RECONCILED} == {
        "late": 2, "corrections_sent": 2, "refused": 0, "past_window": 0, "over_billed": 0}


def test_a_crash_between_sending_and_saving_sends_the_same_identifiers_again(
        sqlite_harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = sqlite_harness
    harness.usage.add_late("org0003", H, traces=5)
    harness.usage.add_late("org0004", H, observations=1)
    real = stripe_store.Queries.record_deliveries

    def dying_save(self: Any, conn: Any, rows: Any) -> None:
        raise SystemExit("process died after Stripe took the corrections")

    monkeypatch.setattr(stripe_store.Queries, "record_deliveries", dying_save)
    crashed = harness.reconcile()
    assert crashed.state != oncely.JobState.SUCCEEDED
    sent_before = harness.stub.stats().accepted
    assert harness.open_corrections() == 3  # written down before sending, never answered

    monkeypatch.setattr(stripe_store.Queries, "record_deliveries", real)
    harness.usage.add_late("org0003", H, traces=7)  # and the source moved on meanwhile
    harness.clock.advance(61)
    resumed = harness.reconcile()
    assert resumed.state == oncely.JobState.SUCCEEDED, resumed.job.errors
    # The written-down corrections went again with their recorded values: Stripe had them.
    assert resumed.result["duplicates"] == 3
    assert harness.stub.stats().duplicates == 3
    # Only the newest arrival is new: org0003's c2, for 7 units.
    new = {e.identifier: int(e.value) for e in harness.stub.accepted()[sent_before:]}
    assert new == {f"tracing_events:org0003:{H_MS}:c2": 7}
    assert harness.open_corrections() == 0
    harness.assert_billed_exactly([H])


def test_an_hourly_run_that_crashed_after_stripe_took_its_events_keeps_their_values(
        tmp_path: Path, clock: FrozenClock, stub: StripeStub,
        monkeypatch: pytest.MonkeyPatch) -> None:
    harness = Harness(f"sqlite:///{tmp_path}/oncely.db", clock, stub)
    real = stripe_store.Queries.record_deliveries

    def dying_save(self: Any, conn: Any, rows: Any) -> None:
        raise SystemExit("process died after Stripe took the hour's events")

    monkeypatch.setattr(stripe_store.Queries, "record_deliveries", dying_save)
    assert run_job(harness.task).state != oncely.JobState.SUCCEEDED
    taken = harness.stub.stats().accepted
    events = len(harness.usage.expected(H))
    assert 0 < taken < events and harness.open_corrections() == events  # all written down
    monkeypatch.setattr(stripe_store.Queries, "record_deliveries", real)
    harness.usage.add_late("org0003", H, traces=6)  # the source moved on before the retry
    clock.advance(61)
    harness.report_hour()
    # The retry sent the values on record, which Stripe has: it did not record org0003's new
    # total under an identifier that holds the old one (6 units would never be billed).
    assert harness.stub.stats().duplicates == taken and harness.open_corrections() == 0
    result = harness.reconcile()
    assert result.result["late"] == 1 and result.result["late_units"] == 6
    harness.assert_billed_exactly([H])
    harness.app.close()


def test_a_zombie_cannot_write_down_corrections(sqlite_harness: Harness) -> None:
    harness = sqlite_harness
    harness.usage.add_late("org0005", H, traces=4)
    takeover: dict[str, Any] = {}

    def lose_the_lease_while_comparing(start: datetime) -> None:
        if "result" not in takeover:  # A pauses here; its lease expires, B reconciles
            takeover["result"] = None
            harness.clock.advance(61)
            takeover["result"] = harness.reconcile()

    harness.usage.hook = lose_the_lease_while_comparing
    zombie = harness.reconcile()
    harness.usage.hook = None
    successor = takeover["result"]
    assert successor.state == oncely.JobState.SUCCEEDED, successor.job.errors
    assert successor.result["corrections_sent"] == 1
    assert zombie.outcome.abandoned  # its fenced write was refused: it sent nothing
    assert harness.stub.stats().duplicates == 0
    harness.assert_billed_exactly([H])


def test_a_zombie_sending_corrections_is_absorbed_by_their_identifiers(
        sqlite_harness: Harness) -> None:
    harness = sqlite_harness
    for org in ("org0001", "org0002", "org0004", "org0005", "org0007"):
        harness.usage.add_late(org, H, traces=2)
    client = harness.metering.client()
    real_send = client.send
    takeover: dict[str, Any] = {}
    guard = threading.Lock()

    def send_then_lose_the_lease(event: Any) -> Any:
        with guard:
            now = "started" not in takeover
            takeover["started"] = True
        if now:  # A has written its corrections down and sends; B takes over meanwhile
            harness.clock.advance(61)
            takeover["result"] = harness.reconcile()
        return real_send(event)

    client.send = send_then_lose_the_lease  # type: ignore[method-assign]
    zombie = harness.reconcile()
    client.send = real_send  # type: ignore[method-assign]
    assert takeover["result"].state == oncely.JobState.SUCCEEDED
    assert takeover["result"].result["late"] == 0  # A's written corrections were on record
    assert zombie.outcome.abandoned
    harness.assert_billed_exactly([H])  # A's late sends were "already exists"


def test_usage_past_stripes_window_is_reported_never_sent(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    harness.usage.add_late("org0006", H, traces=8)
    harness.clock.advance(36 * 86_400)
    before = len(harness.stub.accepted())
    with caplog.at_level(logging.ERROR, logger="oncely_billing.stripe"):
        result = harness.reconcile(days=40)
    assert result.state == oncely.JobState.SUCCEEDED, result.job.errors
    assert result.result["outcome"] == "differences"
    assert result.result["past_window"] == 1 and result.result["past_window_units"] == 8
    assert result.result["late"] == 0
    assert len(harness.stub.accepted()) == before
    assert any("never billed" in record.getMessage() for record in caplog.records)
    assert harness.open_corrections() == 0


def test_the_reconcile_command_lists_then_sends_with_documented_exit_codes(
        sqlite_harness: Harness) -> None:
    harness = sqlite_harness
    harness.usage.add_late("org0008", H, traces=3, observations=1)
    before = len(harness.stub.accepted())
    group = click.Group("metering")
    reconcile_cli.register(group)
    runner = CliRunner()

    class Obj:  # what `oncely metering --json` puts in ctx.obj
        as_json = True

        def runtime(self) -> Any:
            return harness.metering

    listed = runner.invoke(group, ["reconcile", "--dry-run"], obj=Obj())
    assert listed.exit_code == 1, listed.output  # differences found
    report = json.loads(listed.output)
    assert report["dry_run"] is True and report["late"] == 2
    assert {row["identifier"] for row in report["differences"]} == {
        f"tracing_observations:org0008:{H_MS}:c1", f"tracing_events:org0008:{H_MS}:c1"}
    assert len(harness.stub.accepted()) == before and harness.open_corrections() == 0

    sent = runner.invoke(group, ["reconcile", "--days", "2"], obj=harness.app)
    assert sent.exit_code == 0, sent.output
    assert "differences 2026-03-09T00:00:00+00:00" in sent.output
    assert "org0008" in sent.output and "sent c1" in sent.output
    assert "corrections sent 2" in sent.output
    assert len(harness.stub.accepted()) == before + 2
    again = runner.invoke(group, ["reconcile", "--dry-run"], obj=harness.app)
    assert again.exit_code == 0, again.output  # nothing left
    bad = runner.invoke(group, ["reconcile", "--days", "0"], obj=harness.app)
    assert bad.exit_code == 2

    def source_down(start: datetime) -> None:
        raise UsageSourceUnavailable("usage source: connection refused")

    harness.usage.hook = source_down
    down = runner.invoke(group, ["reconcile"], obj=harness.app)
    # `oncely metering` turns it into one line and exit 3 (cli.main)
    assert isinstance(down.exception, UsageSourceError) and down.exception.exit_code == 3
    assert "connection refused" in str(down.exception)


def test_reconciliation_shares_the_hourly_jobs_singleton(sqlite_harness: Harness) -> None:
    harness = sqlite_harness
    spec = harness.app.schedules[RECONCILE_SCHEDULE]
    assert spec.cron == "50 3 * * *" and spec.args == {"reconcile": True}
    refused: list[BaseException] = []
    harness.clock.advance(3600)  # the next hour is due

    def try_to_reconcile(start: datetime) -> None:
        if not refused:
            try:
                harness.app.run_now(harness.task, reconcile=True)
            except oncely.SingletonBusy as exc:
                refused.append(exc)

    harness.usage.hook = try_to_reconcile
    harness.report_hour()
    assert refused  # one sender to Stripe at a time, fleet-wide


# A real usage source: per day first, then per hour for the days that differ --------------

SOURCE_NOW = datetime(2026, 3, 30, 10, 40, tzinfo=UTC)  # the conftest's clock
SOURCE_HOUR = datetime(2026, 3, 30, 9, tzinfo=UTC)
CREATED = datetime(2025, 1, 1, tzinfo=UTC)


def test_late_events_in_a_usage_source_are_billed_once(
        store_url: str, events: Any, tmp_path: Path) -> None:
    clock = FrozenClock(SOURCE_NOW)
    with StripeStub(clock=clock) as stub:
        app = oncely.App(store_url, clock=clock)
        source = DuckDBUsageSource(events.path)
        metering = install_stripe_usage_metering(app, source, settings=settings(stub))
        assert metering.task is not None
        migrations.ensure_schema(app)
        models.add_organizations(app, [
            models.Organization(1, "Alpha", CREATED, stripe_customer_id="cus_A"),
            models.Organization(2, "Bravo", CREATED, stripe_customer_id="cus_B")])
        models.add_projects(app, [models.Project(11, 1, "a", CREATED),
                                  models.Project(21, 2, "b", CREATED)])
        events.add(11, SOURCE_HOUR, traces=5, observations=2)
        events.add(21, SOURCE_HOUR, traces=3)
        events.add(21, SOURCE_HOUR - timedelta(days=1), traces=3)  # before metering began
        assert run_job(metering.task).state == oncely.JobState.SUCCEEDED
        assert len(stub.accepted()) == 3

        events.add(11, SOURCE_HOUR + timedelta(minutes=50), traces=4,  # arrived late
                   spread=timedelta(minutes=5))
        clock.advance(5 * 3600)
        queries_before = source.queries
        result = run_job(metering.task, reconcile=True)
        assert result.state == oncely.JobState.SUCCEEDED, result.job.errors
        assert source.queries - queries_before == 2  # the window per day, then that day
        ms = to_ms(SOURCE_HOUR)
        assert {(e.identifier, e.value) for e in stub.accepted()[3:]} == {
            (f"tracing_events:1:{ms}:c1", "4")}
        assert result.result["orgs_checked"] == 2
        again = run_job(metering.task, reconcile=True)
        assert again.result["late"] == 0 and len(stub.accepted()) == 4
        assert source.queries - queries_before == 3  # the days agree: no hourly query
        app.close()
