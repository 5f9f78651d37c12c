"""Queue controls hold for a fleet of real worker processes, on both stores: a global
max_running, a global rate limit, pause/resume under load, and retention pruning a large backlog
while workers keep running. The limits are declared by the app (tests.apps.limits) and reach the
store when the workers start."""

from __future__ import annotations

import collections
import sqlite3
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs

import pytest
from tests.conftest import read_effects

import oncely
from oncely.cli import main as oncely_cli
from oncely.store.params import JobFilter
from oncely.testing import wait_until
from oncely.types import Job, JobState

# Fleets of worker processes: one at a time (one xdist worker), so they do not starve each other.
pytestmark = pytest.mark.xdist_group("fleet")

APP = "tests.apps.limits:app"
FLEET = 6
RATED = 220  # at 20 starts/s: a burst, then ten more windows' worth


def open_app(url: str) -> oncely.App:
    from tests.apps import limits

    app = oncely.App(url)
    app.tasks = dict(limits.app.tasks)
    app.store.check_schema()  # migrated here, before any worker starts
    return app


def states(app: oncely.App, queue: str) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for row in app.store.job_counts():
        if row.queue == queue:
            counts[str(row.state)] += row.count
    return counts


def jobs_of(app: oncely.App, queue: str) -> list[Job]:
    return app.store.job_list(JobFilter(queue=queue, limit=10_000))


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (an end before a start at a tie)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def start_fleet(workers, url: str, effects: str, count: int, concurrency: int = 4,
                env: dict[str, str] | None = None) -> None:
    for _ in range(count):
        workers.start(url, effects, "--concurrency", str(concurrency), app=APP, env=env)


def test_six_workers_hold_max_running_and_a_rate_of_20_per_second(
    any_url, effects_sqlite, workers
):
    """One fleet, two limited queues at once: capped (max_running=2) and rated (20 starts/s,
    watched for 10 s)."""
    app = open_app(any_url)
    app.enqueue_many("hold", [{"n": n, "seconds": 0.2} for n in range(24)])
    app.enqueue_many("tick", [{"n": n} for n in range(RATED)])
    start_fleet(workers, any_url, effects_sqlite, FLEET)
    wait_until(lambda: states(app, "rated")["succeeded"] == RATED
               and states(app, "capped")["succeeded"] == 24,
               timeout=60, interval=0.25, message="every capped and rated job succeeded")
    assert workers.stop_all() == [0] * FLEET

    effects = read_effects(effects_sqlite, "hold")
    assert sorted(int(key) for _, key, *_ in effects) == list(range(24)), "not exactly once each"
    intervals = [(started, ended) for *_, started, ended in effects]
    # Every worker had 4 idle handler threads: only the fleet-wide limit kept this at 2.
    assert most_at_once(intervals) == 2, "max_running=2 was exceeded or never reached"

    rated = jobs_of(app, "rated")
    starts = sorted(job.started_at.timestamp() for job in rated if job.started_at is not None)
    assert len(starts) == RATED
    # The documented precision: at most 20 starts in any window (t - 1 s, t] of start instants
    # (one clock here); 2 µs allows for the instants' storage rounding.
    tightest = min(later - earlier for earlier, later in zip(starts, starts[20:], strict=False))
    assert tightest >= 1.0 - 2e-6, f"21 starts within {tightest:.6f} s"
    held = sum(1 for t in starts if t < starts[0] + 10.0)
    assert 180 <= held <= 200, f"{held} starts in the first 10 s, expected close to 200"
    assert len({job.attempt for job in rated}) == 1, "a rated job was retried"


def test_pause_stops_new_starts_and_running_jobs_finish(any_url, effects_sqlite, workers, capsys):
    app = open_app(any_url)
    app.enqueue_many("steady", [{"n": n, "seconds": 0.4} for n in range(36)])
    start_fleet(workers, any_url, effects_sqlite, 2, concurrency=4)
    wait_until(lambda: states(app, "steady")["succeeded"] >= 3, timeout=60, interval=0.05,
               message="the queue under load")
    oncely_cli(["--database-url", any_url, "queues", "pause", "steady"])
    paused_at = time.time()
    assert "queue steady paused" in capsys.readouterr().out
    running = [job.id for job in jobs_of(app, "steady") if job.state == JobState.RUNNING]
    wait_until(lambda: states(app, "steady")["running"] == 0, timeout=30, interval=0.02,
               message="running jobs finished while paused")
    assert all(app.store.job_get(job_id).state == JobState.SUCCEEDED for job_id in running)
    waiting = states(app, "steady")["available"]
    assert waiting > 0, "the queue drained before the pause could be seen"
    started_late = [job.id for job in jobs_of(app, "steady")
                    if job.started_at is not None and job.started_at.timestamp() > paused_at]
    assert started_late == [], "jobs started after the pause"
    resuming_at = time.time()
    oncely_cli(["--database-url", any_url, "queues", "resume", "steady"])
    wait_until(lambda: states(app, "steady")["succeeded"] == 36, timeout=60, interval=0.1,
               message="every job done after resume")
    assert workers.stop_all() == [0, 0]
    starts = [job.started_at.timestamp() for job in jobs_of(app, "steady")]
    assert all(t <= paused_at or t >= resuming_at for t in starts), "a start while paused"
    assert sorted(int(key) for _, key, *_ in read_effects(effects_sqlite, "steady")) == list(
        range(36))


BULK = 100_000
CHUNK = 20_000
SQLITE_BULK = """
WITH RECURSIVE n(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM n WHERE i < :last)
INSERT INTO oncely_jobs (queue, task, args, state, attempt, max_attempts, run_at, created_at,
                         started_at, finished_at)
SELECT 'bulk', 'steady', '{}', 'succeeded', 1, 1, :t0 + i * 0.001, :t0 + i * 0.001,
       :t0 + i * 0.001, :t0 + i * 0.001
FROM n"""
POSTGRES_BULK = """
INSERT INTO oncely_jobs (queue, task, args, state, attempt, max_attempts, run_at, created_at,
                         started_at, finished_at)
SELECT 'bulk', 'steady', '{}', 'succeeded', 1, 1, t, t, t, t
FROM (SELECT to_timestamp(%(t0)s + i * 0.001) AS t
      FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i) AS s"""


def insert_finished(url: str, t0: float) -> None:
    """BULK succeeded jobs of queue bulk, finished a millisecond apart from t0, inserted in
    chunks so the workers get the database in between."""
    chunks = [{"first": first, "last": first + CHUNK - 1, "t0": t0}
              for first in range(0, BULK, CHUNK)]
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60, isolation_level=None)
        for chunk in chunks:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(SQLITE_BULK, chunk)
            conn.execute("COMMIT")
        conn.close()
        return
    import psycopg

    base, _, query = url.partition("?")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {parse_qs(query)['schema'][0]}")
        for chunk in chunks:
            conn.execute(POSTGRES_BULK, chunk)


def test_retention_prunes_100000_finished_jobs_while_workers_keep_running(
    any_url, effects_sqlite, workers
):
    app = open_app(any_url)
    env = {"ONCELY_MAINTENANCE_INTERVAL": "0.5", "ONCELY_LEADER_TTL": "3"}
    start_fleet(workers, any_url, effects_sqlite, 2, env=env)
    wait_until(lambda: len(app.store.worker_list()) == 2, timeout=30, message="2 workers up")
    t0 = datetime.now(UTC).timestamp() - 3600
    insert_finished(any_url, t0)
    stream = 0
    deadline = time.monotonic() + 60
    pruning_seen: datetime | None = None  # when the first pruned batch was seen
    while (left := states(app, "bulk")["succeeded"]) > 1000:  # keep the workers busy meanwhile
        assert time.monotonic() < deadline, "retention did not catch up within 60 s"
        if pruning_seen is None and left < BULK:
            pruning_seen = datetime.now(UTC)
        app.enqueue_job("steady", {"n": stream})
        stream += 1
        time.sleep(0.01)  # a fast machine prunes the lot in well under a second
    pruned_at = datetime.now(UTC)
    wait_until(lambda: states(app, "steady")["succeeded"] == stream, timeout=30, interval=0.05,
               message="the stream drained")
    assert workers.stop_all() == [0, 0]
    kept = app.store.job_list(JobFilter(queue="bulk", limit=5000))
    assert len(kept) == 1000, "retention kept the wrong number"
    oldest_kept = min(job.finished_at.timestamp() for job in kept)
    assert oldest_kept == pytest.approx(t0 + (BULK - 1000) * 0.001, abs=1e-4)
    assert stream >= 10, "pruning finished before the workers could be watched"
    # Pruning goes in small transactions between which claims get through: a job enqueued after
    # the first batch was pruned started before the last one was (one long prune holding the
    # store's write lock would start none of them until it ended).
    assert pruning_seen is not None, "the bulk rows went all at once"
    during = [job for job in jobs_of(app, "steady") if job.created_at >= pruning_seen]
    assert any(job.started_at is not None and job.started_at < pruned_at for job in during), (
        "no job enqueued while pruning ran started before it ended"
    )
