"""A usage source that stays down fails the run cleanly: nothing written, the breaker opens,
the next run catches up, and the schedule's ledger says why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

import oncely
from oncely.testing import run_job, wait_until, worker_running
from oncely_billing import (
    DuckDBUsageSource,
    GuardedSource,
    UsageCounts,
    UsageSourceUnavailable,
    db,
    metering_of,
)
from oncely_billing.notify import outbox_rows
from oncely_billing.resilience import CircuitBreaker
from oncely_billing.thresholds import THRESHOLDS_SCHEDULE

from .conftest import (
    EXPECTED_AFTER_FIRST_RUN,
    Events,
    load_scenario,
    make_app,
    run_thresholds,
    state_of,
)

UNTOUCHED = {org: (0, None) for org in EXPECTED_AFTER_FIRST_RUN}


class Flaky(GuardedSource):
    """A DuckDB source behind a switch: while ``down``, every query fails like a dead server."""

    def __init__(self, inner: DuckDBUsageSource, **policy: Any) -> None:
        self.inner = inner
        self.name = "flaky"
        self.down = True
        self.attempts_seen = 0
        super().__init__(**policy)

    def _query(
        self, start: datetime, end: datetime, granularity: Any, timeout: float
    ) -> UsageCounts:
        self.attempts_seen += 1
        if self.down:
            raise ConnectionRefusedError("usage server refused the connection")
        return self.inner._query(start, end, granularity, timeout)


def test_outage_fails_cleanly_then_catches_up(
    store_url: str, clock: oncely.FrozenClock, events: Events
) -> None:
    monotonic = [0.0]
    breaker = CircuitBreaker("usage", failure_threshold=3, reset_after=30.0,
                             monotonic=lambda: monotonic[0])
    source = Flaky(DuckDBUsageSource(events.path), attempts=3, breaker=breaker,
                   sleep=lambda seconds: None)
    app = make_app(store_url, source, clock, events)
    load_scenario(app, events)
    task = metering_of(app).thresholds_task

    failed = run_job(task)
    assert failed.state == oncely.JobState.RETRYABLE
    assert "usage source flaky failed 3 times" in failed.job.errors[-1].message
    assert "refused the connection" in failed.job.errors[-1].message
    assert source.attempts_seen == 3  # retried with backoff, then gave up
    assert state_of(app) == UNTOUCHED and outbox_rows(app) == []  # no partial state

    refused = run_job(task)  # the breaker is open: no query is even sent
    assert "circuit open" in refused.job.errors[-1].message
    assert source.attempts_seen == 3 and breaker.state == "open"

    source.down = False
    monotonic[0] += 31  # the breaker lets a trial call through
    clock.advance(timedelta(hours=1))
    caught_up = run_thresholds(app)
    assert caught_up["mode"] == "full" and breaker.state == "closed"
    assert state_of(app) == EXPECTED_AFTER_FIRST_RUN
    app.close()


def test_a_slow_query_is_interrupted_by_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "big.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute(db.q("duckdb", "schema"))
    conn.execute("INSERT INTO traces SELECT i, i % 50000, TIMESTAMP '2026-03-29' "
                 "+ to_milliseconds(i % 86400000), NULL FROM range(1500000) r(i)")
    conn.close()
    source = DuckDBUsageSource(path, timeout=0.005, attempts=2, sleep=lambda s: None)
    start, end = datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC)
    with pytest.raises(UsageSourceUnavailable, match="exceeded"):
        source.usage_by_project(start, end)
    assert source.queries == 2  # a timeout is worth retrying
    source.timeout = 60
    assert source.usage_by_project(start, end).total() == 1_500_000


def attempt_ended(app: oncely.App, job_id: int | None, attempt: int) -> bool:
    job = app.store.job_get(job_id) if job_id is not None else None
    ended = (oncely.JobState.RETRYABLE, oncely.JobState.FAILED)
    return job is not None and job.attempt == attempt and job.state in ended


def test_a_failed_slot_says_why_in_the_ledger(
    sqlite_url: str, clock: oncely.FrozenClock, events: Events
) -> None:
    source = Flaky(DuckDBUsageSource(events.path), attempts=1, sleep=lambda seconds: None)
    app = make_app(sqlite_url, source, clock, events)
    load_scenario(app, events)

    def ledger() -> list[Any]:
        return list(app.store.ledger_list(THRESHOLDS_SCHEDULE))

    with worker_running(app, queues=["billing"], concurrency=1):
        wait_until(lambda: app.store.schedule_get(THRESHOLDS_SCHEDULE), timeout=20,
                   message="the schedule registered")
        clock.set(datetime(2026, 3, 30, 11, 35, 1, tzinfo=UTC))
        wait_until(lambda: ledger(), timeout=20, message="the 11:35 slot enqueued")
        for attempt in (1, 2, 3):  # three attempts, with the retry delays fast-forwarded
            wait_until(lambda attempt=attempt: attempt_ended(app, ledger()[0].job_id, attempt),
                       timeout=20, message=f"attempt {attempt} ended")
            clock.advance(timedelta(minutes=5))
        wait_until(lambda: ledger()[0].outcome == oncely.SlotOutcome.FAILED, timeout=20)
    record = ledger()[0]
    assert record.slot == datetime(2026, 3, 30, 11, 35, tzinfo=UTC)
    job = app.store.job_get(record.job_id)
    assert job is not None and len(job.errors) == 3
    assert "usage source flaky failed" in (record.note or job.errors[-1].message)
    assert state_of(app) == UNTOUCHED
    app.close()
