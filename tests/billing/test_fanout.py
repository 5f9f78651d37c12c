"""Fan-out mode of the free-tier job: the same results as the single run, a failed chunk retried
alone, a chunk failing for good fails the slot, and a re-run parent enqueues no chunk twice."""

from __future__ import annotations

import json
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import oncely
from oncely.store.params import JobFilter
from oncely.testing import FrozenClock, run_job, wait_until, worker_running
from oncely_billing import MeteringSettings, db, fanout, metering_of, seed, thresholds
from oncely_billing.notify import SEND_TASK, outbox_rows
from oncely_billing.thresholds import ALL_ORGS, THRESHOLDS_SCHEDULE, THRESHOLDS_TASK

from .conftest import (
    EXPECTED_AFTER_FIRST_RUN,
    EXPECTED_NOTIFICATIONS,
    NOW,
    Events,
    advance_when_idle,
    load_scenario,
    make_app,
    state_of,
)

FAST = {"fan_out_poll": 0.02, "fan_out_retry_delay": 0.0}
CHUNKS = "billing-chunks"


# planning ---------------------------------------------------------------------------------

def test_split_cuts_contiguous_ranges_of_equal_size_that_cover_every_id() -> None:
    ids = [3, 5, 8, 13, 21, 34, 55, 89, 144, 233]
    ranges = fanout.split(ids, 4)
    assert ranges[0][0] == ALL_ORGS[0] and ranges[-1][1] == ALL_ORGS[1]
    assert all(hi + 1 == lo for (_, hi), (lo, _) in pairwise(ranges))
    sizes = [sum(1 for i in ids if lo <= i <= hi) for lo, hi in ranges]
    assert sizes == [2, 3, 2, 3] and fanout.split(ids, 4) == ranges  # stable
    assert fanout.split([7, 9], 5) == [(ALL_ORGS[0], 8), (9, ALL_ORGS[1])]
    assert fanout.split([], 3) == [ALL_ORGS] and fanout.split(ids, 1) == [ALL_ORGS]


def test_fan_out_settings_from_the_environment() -> None:
    settings = MeteringSettings.from_env({"ONCELY_METERING_FAN_OUT": "8",
                                          "ONCELY_METERING_FAN_OUT_CONCURRENCY": "3"})
    assert (settings.fan_out, settings.fan_out_concurrency, settings.fan_out_queue) == (
        8, 3, CHUNKS)
    with pytest.raises(oncely.ConfigError, match="fan_out"):
        MeteringSettings(fan_out=-1)
    with pytest.raises(oncely.ConfigError, match="fan_out_concurrency"):
        MeteringSettings(fan_out_concurrency=0)


def test_run_thresholds_takes_fan_out_for_one_run(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from oncely_billing.cli import metering

    base = ["--database-url", f"sqlite:///{tmp_path / 'o.db'}", "--usage",
            f"duckdb:///{tmp_path / 'u.duckdb'}", "--json"]
    queued = CliRunner().invoke(metering, [*base, "run-thresholds", "--enqueue", "--fan-out", "6"])
    assert queued.exit_code == 0, queued.output
    app = oncely.App(f"sqlite:///{tmp_path / 'o.db'}")
    job = app.get_job(json.loads(queued.output)["job_id"])
    assert job is not None and job.args == {"full": False, "fan_out": 6}
    app.close()
    refused = CliRunner().invoke(metering, [*base, "run-thresholds", "--fan-out", "1000"])
    assert refused.exit_code == 2 and "1000" in refused.output


# same results as the single run -----------------------------------------------------------

@pytest.fixture(scope="module")
def seeded_usage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fanout") / "usage.duckdb"
    seed.build_usage(path, orgs=240, seed=5, end=NOW, days=6, heavy_fraction=0.15)
    return path


@pytest.fixture
def second_url(store_url: str, tmp_path: Path) -> Iterator[str]:
    """Another store of the same kind as ``store_url``."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    import psycopg

    from tests.conftest import with_query

    base = store_url.split("?")[0]
    schema = f"oncely_t_{uuid.uuid4().hex[:12]}"
    yield with_query(base, schema=schema)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def tables(app: oncely.App) -> dict[str, Any]:
    """What a run decides: org rows (the job's columns), rollup, outbox and its send jobs."""
    with app.transaction() as tx:
        orgs = tx.execute(
            "SELECT id, cycle_start, cycle_usage, threshold_state, state_changed_at, "
            "usage_updated_at FROM metering_organizations ORDER BY id").fetchall()
        rollup = tx.execute("SELECT org_id, day, units FROM metering_usage_daily "
                            "ORDER BY org_id, day").fetchall()
    outbox = [{k: v for k, v in row.items() if k != "id"} for row in outbox_rows(app)]
    sends = Counter(job.args["outbox_id"] for job in app.read.jobs(task=SEND_TASK, limit=10_000))
    assert sorted(sends) == sorted(row["id"] for row in outbox_rows(app))
    assert set(sends.values()) <= {1}  # one send job per outbox row: each email queued once
    return {"orgs": [tuple(r) for r in orgs], "rollup": [tuple(r) for r in rollup],
            "outbox": sorted(outbox, key=lambda r: (r["org_id"], r["threshold"]))}


DECIDED = ("orgs_changed", "org_rows_written", "usage_changed", "notifications", "blocked",
           "unblocked", "failed_chunks")


def test_fan_out_writes_what_the_single_run_writes(
    store_url: str, second_url: str, seeded_usage: Path, tmp_path: Path
) -> None:
    usage = tmp_path / "usage.duckdb"
    shutil.copyfile(seeded_usage, usage)
    clock = FrozenClock(NOW)
    single = make_app(store_url, None, clock, Events(usage))
    fanned = make_app(second_url, None, clock, Events(usage), fan_out=4, **FAST)
    for app in (single, fanned):
        seed.load_store(app, usage)
    with worker_running(fanned, queues=[CHUNKS], concurrency=4, maintenance=False):
        for hour in range(2):  # the first (full) run, then an hourly one after new events
            if hour:
                seed.append_events(usage, clock.now(), clock.now() + timedelta(hours=1))
                clock.advance(3600)
            one = run_job(metering_of(single).thresholds_task, lease_ttl=120)
            many = run_job(metering_of(fanned).thresholds_task, lease_ttl=120)
            assert one.state == many.state == oncely.JobState.SUCCEEDED, many.job.errors
            assert many.result["fan_out"] == 4 and len(set(many.result["chunk_jobs"])) == 4
            assert {k: many.result[k] for k in DECIDED} == {k: one.result[k] for k in DECIDED}
            assert tables(fanned) == tables(single)
    first = tables(single)
    assert len(first["outbox"]) >= 10 and any(r["kind"] == "ingestion_blocked"
                                              for r in first["outbox"])
    for app in (single, fanned):
        app.close()


# retries and failures, on a worker, through the schedule's slot --------------------------

def slot_outcome(app: oncely.App) -> oncely.SlotOutcome:
    def ended() -> Any:
        records = app.read.ledger(THRESHOLDS_SCHEDULE)
        return records and records[0].outcome in (oncely.SlotOutcome.RAN,
                                                  oncely.SlotOutcome.FAILED) and records[0]
    return wait_until(ended, timeout=60, message="the slot's outcome").outcome


def chunk_runs(app: oncely.App) -> Counter[int]:
    """Executions (attempts) of the chunk task, by chunk index."""
    by_job = {job.id: job.args["chunk"] for job in app.read.jobs(task=fanout.CHUNK_TASK)}
    return Counter(by_job[e.job_id] for e in app.read.executions(task=fanout.CHUNK_TASK))


def fail_chunk(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make the middle chunk's evaluation fail ``times`` times (its lower bound is 3: the
    scenario's ids 1..7 in three chunks are 1-2, 3-4 and 5-7)."""
    original, failures = thresholds.evaluate, []

    def evaluate(app: oncely.App, settings: Any, as_of: Any,
                 org_range: tuple[int, int] = ALL_ORGS) -> Any:
        if org_range[0] == 3 and len(failures) < times:
            failures.append(1)
            raise RuntimeError("connection reset by peer (injected)")
        return original(app, settings, as_of, org_range)

    monkeypatch.setattr(thresholds, "evaluate", evaluate)
    return failures


def test_a_failed_chunk_is_retried_alone_and_the_slot_runs(
    store_url: str, clock: FrozenClock, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(store_url, None, clock, events, fan_out=3, **FAST)
    load_scenario(app, events)
    failures = fail_chunk(monkeypatch, times=1)
    assert app.trigger(THRESHOLDS_SCHEDULE) is not None  # the 10:35 slot's job
    with worker_running(app, queues=["billing", CHUNKS], concurrency=4):
        assert slot_outcome(app) == oncely.SlotOutcome.RAN
    assert failures == [1] and chunk_runs(app) == {0: 1, 1: 2, 2: 1}
    assert state_of(app) == EXPECTED_AFTER_FIRST_RUN
    assert {(r["org_id"], r["threshold"], r["kind"]) for r in outbox_rows(app)} == (
        EXPECTED_NOTIFICATIONS)
    parent = app.read.jobs(task=THRESHOLDS_TASK)[0]
    assert parent.attempt == 1 and parent.result["chunk_attempts"] == 4
    app.close()


def test_a_chunk_failing_for_good_fails_the_slot(
    store_url: str, clock: FrozenClock, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(store_url, None, clock, events, fan_out=3, fan_out_attempts=2, **FAST)
    load_scenario(app, events)
    fail_chunk(monkeypatch, times=1_000)
    job = app.trigger(THRESHOLDS_SCHEDULE)
    assert job is not None
    queues = ("billing", CHUNKS)
    with worker_running(app, queues=queues, concurrency=4):
        for attempt in (1, 2, 3):
            state = wait_until(lambda attempt=attempt: job.refresh().attempt == attempt and (
                job.job.state in (oncely.JobState.RETRYABLE, oncely.JobState.FAILED))
                and job.job.state, timeout=60, message=f"the parent's attempt {attempt}")
            if state == oncely.JobState.RETRYABLE:  # on to the parent's next attempt
                # once the parent's other chunks (it gives up as soon as one chunk has failed
                # for good) no longer run or wait for a claim
                wait_until(lambda: advance_when_idle(clock, [
                    j for j in app.store.job_list(JobFilter(limit=10_000)) if j.queue in queues
                ], job.job.run_at), timeout=60, message="no job running or due")
        assert state == oncely.JobState.FAILED
        assert slot_outcome(app) == oncely.SlotOutcome.FAILED
    # each of the parent's 3 attempts gave the failing chunk alone its 2 attempts
    assert chunk_runs(app) == {0: 1, 1: 6, 2: 1}
    assert "chunk 1 (organizations 3..4)" in job.job.errors[-1].message
    assert "connection reset by peer" in job.job.errors[-1].message
    state = state_of(app)  # the other chunks' organizations were written
    assert all(state[org] == EXPECTED_AFTER_FIRST_RUN[org] for org in (1, 2, 5, 6, 7))
    app.close()


def test_a_re_run_parent_enqueues_no_chunk_twice(
    store_url: str, clock: FrozenClock, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCELY_SHUTDOWN_GRACE", "0.2")  # a stopping worker hands the run back
    app = make_app(store_url, None, clock, events, fan_out=3, **FAST)
    load_scenario(app, events)
    job = app.trigger(THRESHOLDS_SCHEDULE)
    assert job is not None
    with worker_running(app, queues=["billing"], concurrency=2):  # no worker for the chunks
        plan = wait_until(lambda: fanout.load_plan(app, job.id), message="the plan")
    # that worker stopped: the parent was handed back; the next attempt finds its plan
    assert len(plan.chunks) == 3 and job.refresh().state != oncely.JobState.SUCCEEDED
    with worker_running(app, queues=["billing", CHUNKS], concurrency=4):
        assert slot_outcome(app) == oncely.SlotOutcome.RAN
    children = app.read.jobs(task=fanout.CHUNK_TASK)
    assert sorted(c.id for c in children) == sorted(c.job_id for c in plan.chunks)
    parent = job.refresh()
    assert parent.result["resumed"] is True and parent.result["chunk_jobs"] == [
        c.job_id for c in plan.chunks]
    assert parent.result["source_queries"] == 1  # the first attempt's refresh, not redone
    assert state_of(app) == EXPECTED_AFTER_FIRST_RUN
    with db.connection(app) as conn:
        done = db.fetch_all(conn, db.sql_dialect(app), "state_prefix",
                            {"prefix": fanout.plan_key(job.id) + ".%"})
    assert len(done) == 3
    app.close()


# a fleet of worker processes --------------------------------------------------------------

def test_chunks_run_on_several_worker_processes_and_a_killed_parent_is_taken_over(
    store_url: str, events: Events, workers: Any
) -> None:
    from oncely.clock import clock_from_spec
    from tests.apps import free_tier_fanout as fleet

    spec = f"warp:{NOW.isoformat()}:1:{time.time()}"
    env = {"ONCELY_TEST_USAGE": str(events.path), "ONCELY_CLOCK": spec, "ONCELY_LEASE_TTL": "6",
           "ONCELY_LEADER_TTL": "2", "ONCELY_MAINTENANCE_INTERVAL": "0.5",
           "ONCELY_PREFETCH": "0", "ONCELY_TEST_CHUNK_PAUSE": "0.3"}
    app = fleet.make(store_url, str(events.path), clock_from_spec(spec))
    load_scenario(app, events)
    app.pause_queue(CHUNKS)  # the chunks wait until the parent's worker was killed
    job = app.trigger(THRESHOLDS_SCHEDULE)
    assert job is not None
    first = workers.start(store_url, "", "--queues", "billing", app=fleet.__name__ + ":app",
                          env=env)
    plan = wait_until(lambda: fanout.load_plan(app, job.id), timeout=60, message="the plan")
    first.send_signal(signal.SIGKILL)
    first.wait()
    workers.start(store_url, "", "--queues", "billing", app=fleet.__name__ + ":app", env=env)
    for _ in range(3):
        workers.start(store_url, "", "--queues", CHUNKS, "--concurrency", "1",
                      app=fleet.__name__ + ":app", env=env)
    # the dead worker's attempt is rescued (given back, due now) and claimed by the new worker
    wait_until(lambda: job.refresh().state == oncely.JobState.RUNNING and job.job.fence > 1,
               timeout=60, message="the parent taken over")
    app.resume_queue(CHUNKS)
    assert slot_outcome(app) == oncely.SlotOutcome.RAN
    workers.stop_all()

    parent = job.refresh()
    assert parent.result["resumed"] is True
    children = app.read.jobs(task=fanout.CHUNK_TASK)
    assert sorted(c.id for c in children) == sorted(c.job_id for c in plan.chunks)  # no twice
    assert {c.state for c in children} == {oncely.JobState.SUCCEEDED}
    runs = app.read.executions(task=fanout.CHUNK_TASK)
    assert len(runs) == fleet.FAN_OUT and len({r.worker_id for r in runs}) >= 2
    assert state_of(app) == EXPECTED_AFTER_FIRST_RUN
    assert {(r["org_id"], r["threshold"], r["kind"]) for r in outbox_rows(app)} == (
        EXPECTED_NOTIFICATIONS)
    app.close()
