"""Real worker processes sharing one SQLite file, real signals, side effects counted outside the
queue."""

from __future__ import annotations

import collections
import signal
import time

import pytest
from tests.conftest import open_basic_app, read_effects, state_counts

from oncely.store.params import JobFilter
from oncely.testing import wait_until
from oncely.types import JobState

# Fleets of worker processes: one at a time (one xdist worker), so they do not starve each other.
pytestmark = pytest.mark.xdist_group("fleet")


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def test_four_workers_two_threads_each_drain_5000_jobs_exactly_once(url, effects_sqlite, workers):
    app = open_basic_app(url)
    app.enqueue_many("record", [{"n": n} for n in range(5000)])
    for _ in range(4):
        workers.start(url, effects_sqlite, "--concurrency", "2")
    wait_until(lambda: state_counts(app)[JobState.SUCCEEDED] == 5000, timeout=240, interval=0.2,
               message="5000 jobs succeeded")
    assert workers.stop_all() == [0, 0, 0, 0]
    effects = read_effects(effects_sqlite, "record")
    keys = collections.Counter(key for _, key, *_ in effects)
    assert len(effects) == 5000, "some job ran more than once or not at all"
    assert set(keys) == {str(n) for n in range(5000)} and max(keys.values()) == 1
    assert len({pid for *_, pid, _, _ in effects}) > 1, "the work was not shared"
    assert "database is locked" not in "".join(workers.log(i) for i in range(4))


def test_sigterm_lets_jobs_stop_and_releases_them(url, effects_sqlite, workers):
    app = open_basic_app(url)
    app.enqueue_many("slow", [{"n": n, "seconds": 3.0} for n in range(6)])
    # No prefetch: exactly the two running jobs are in hand (queued ones are released at once
    # on shutdown, see test_worker_prefetch.py).
    proc = workers.start(url, effects_sqlite, "--concurrency", "2",
                         env={"ONCELY_SHUTDOWN_GRACE": "0.5", "ONCELY_PREFETCH": "0"})
    # Claimed is not begun: a job still waiting for its thread is handed back without an error.
    wait_until(lambda: len(read_effects(effects_sqlite, "slow-began")) == 2, timeout=30,
               message="2 handlers began")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    after = state_counts(app)
    assert after[JobState.RUNNING] == 0, "a job was left running without a live owner"
    released = app.store.job_list(JobFilter(state=JobState.RETRYABLE))
    assert len(released) == 2
    assert all(job.attempt == 0 and job.errors[-1].kind == "shutdown" for job in released)
    # A new worker finishes everything, each job exactly once.
    workers.start(url, effects_sqlite, "--concurrency", "3")
    wait_until(lambda: state_counts(app)[JobState.SUCCEEDED] == 6, timeout=60, interval=0.1)
    keys = sorted(key for _, key, *_ in read_effects(effects_sqlite, "slow"))
    assert keys == [str(n) for n in range(6)]


def test_second_signal_releases_at_once(url, effects_sqlite, workers):
    app = open_basic_app(url)
    app.enqueue_many("slow", [{"n": n, "seconds": 60.0} for n in range(2)])
    proc = workers.start(url, effects_sqlite, "--concurrency", "2",
                         env={"ONCELY_SHUTDOWN_GRACE": "60"})
    wait_until(lambda: state_counts(app)[JobState.RUNNING] == 2, timeout=30)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    assert time.monotonic() - started < 10
    assert state_counts(app)[JobState.RUNNING] == 0


def test_sigkill_leaves_running_jobs_that_the_rescuer_recovers(url, effects_sqlite, workers):
    app = open_basic_app(url)
    app.enqueue_many("slow", [{"n": n, "seconds": 30.0} for n in range(2)])
    fast_lease = {"ONCELY_LEASE_TTL": "2", "ONCELY_LEADER_TTL": "2",
                  "ONCELY_MAINTENANCE_INTERVAL": "0.5"}
    victim = workers.start(url, effects_sqlite, "--concurrency", "2", env=fast_lease)
    wait_until(lambda: state_counts(app)[JobState.RUNNING] == 2, timeout=30)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    running = app.store.job_list(JobFilter(state=JobState.RUNNING))
    assert len(running) == 2 and all(job.lease_owner for job in running)
    assert {job.lease_owner.split(":")[1] for job in running} == {str(victim.pid)}
    # A survivor proves the victim gone (its liveness lock is free) and runs them again, as
    # their first attempt still: the lost attempt was not the handler's failure.
    dead = running[0].lease_owner
    workers.start(url, effects_sqlite, "--concurrency", "2", env=fast_lease)
    wait_until(
        lambda: all(j.errors and j.state == JobState.RUNNING and j.lease_owner != dead
                    for j in app.store.job_list(JobFilter(task="slow"))),
        timeout=30, message="both jobs rescued and re-run",
    )
    for job in app.store.job_list(JobFilter(task="slow")):
        assert job.errors[0].kind == "worker_gone"
        assert str(victim.pid) in job.errors[0].message
        assert job.attempt == 1
