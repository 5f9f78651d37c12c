"""Recovery after a worker dies, with real worker processes and real signals, on both stores.

Each test runs ``recovery.hold`` (``tests/apps/recovery.py``), a singleton job that records its
start (pid, fence) in a side-effect database, and asserts on what really happened — and on the
order of things, not on timings: a job taken over *before its lease ran out* can only have been
taken over because its worker's death was proven (the liveness lock, ``oncely.worker.liveness``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from datetime import UTC, datetime
from typing import NamedTuple

import pytest
from tests.conftest import Workers, read_effects

import oncely
from oncely.store.base import LEADER_LEASE_KEY
from oncely.testing import wait_until
from oncely.types import ErrorKind, JobState

pytestmark = pytest.mark.xdist_group("fleet")

APP = "tests.apps.recovery:app"
QUICK_STOP = {"ONCELY_SHUTDOWN_GRACE": "1"}  # default lease TTL (30 s): only liveness is quick


class Start(NamedTuple):
    job_id: int
    fence: int
    pid: int


def open_app(url: str) -> oncely.App:
    from tests.apps import recovery

    app = oncely.App(url)
    app.tasks = dict(recovery.app.tasks)
    return app


def starts(effects: str, above: int = 0) -> list[Start]:
    rows = read_effects(effects, "started")
    return sorted((Start(int(r[2]), int(r[3]), int(r[4])) for r in rows if r[3] > above),
                  key=lambda start: start.fence)


def effect_fences(effects: str, kind: str) -> set[int]:
    return {int(row[3]) for row in read_effects(effects, kind)}


def registered(app: oncely.App, procs: list[subprocess.Popen[bytes]]) -> bool:
    return {proc.pid for proc in procs} <= {row.pid for row in app.store.worker_list()}


def proc_of(procs: list[subprocess.Popen[bytes]], pid: int) -> subprocess.Popen[bytes]:
    return next(proc for proc in procs if proc.pid == pid)


def lease_until(app: oncely.App, job_id: int) -> datetime:
    job = app.store.job_get(job_id)
    assert job is not None and job.state == JobState.RUNNING and job.lease_expires_at
    return job.lease_expires_at


def test_a_killed_workers_job_is_rescued_before_its_lease_runs_out(any_url, effects_sqlite,
                                                                   workers: Workers):
    app = open_app(any_url)
    handle = app.enqueue_job("recovery.hold", {"seconds": 60.0})
    procs = [workers.start(any_url, effects_sqlite, app=APP, env=QUICK_STOP) for _ in range(2)]
    (first,) = wait_until(lambda: starts(effects_sqlite), timeout=60, message="the job started")
    until = lease_until(app, handle.id)
    victim = proc_of(procs, first.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    (successor,) = wait_until(lambda: starts(effects_sqlite, above=first.fence), timeout=60,
                              message="another worker took the job over")
    job = app.store.job_get(handle.id)
    assert job is not None and successor.job_id == handle.id and successor.pid != first.pid
    (error,) = job.errors
    assert error.kind == ErrorKind.WORKER_GONE
    assert error.message.startswith("rescued (1 of 3), attempt given back")
    assert error.at < until, "rescued only once the lease ran out: the death was not proven"
    assert job.attempt == 1  # the lost attempt did not count
    assert sorted(workers.stop_all()) == [-signal.SIGKILL, 0]  # type: ignore[type-var]


def test_a_rerun_after_a_kill_past_a_fenced_write_with_checkpoint_does_not_write_again(
    any_url, effects_sqlite, workers: Workers
):
    """The worker dies after its fenced write committed: the attempt is given back and runs
    again, and the checkpoint saved in the write's own transaction tells the re-run it is done."""
    from tests.apps import chaos, recovery

    app = open_app(any_url)
    chaos.create_records_table(app.store, recovery.RECORDS)
    handle = app.enqueue_job("recovery.write_then_hold", {"seconds": 60.0})
    procs = [workers.start(any_url, effects_sqlite, app=APP, env=QUICK_STOP) for _ in range(2)]
    wait_until(lambda: read_effects(effects_sqlite, "written"), timeout=60,
               message="the first attempt wrote its record")
    (first,) = starts(effects_sqlite)
    victim = proc_of(procs, first.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    job = wait_until(lambda: (j := app.store.job_get(handle.id)) and j.state == JobState.SUCCEEDED
                     and j, timeout=60, message="the re-run finished")
    assert [int(row[3]) for row in read_effects(effects_sqlite, "resumed")] == [job.fence]
    assert job.fence > first.fence and job.result == "written by an earlier attempt"
    assert [error.kind for error in job.errors] == [ErrorKind.WORKER_GONE]
    records = chaos.read_records(app.store, recovery.RECORDS)
    assert [(r["job_id"], r["fence"]) for r in records] == [(handle.id, first.fence)]
    assert job.checkpoint == "written"
    assert sorted(workers.stop_all()) == [-signal.SIGKILL, 0]  # type: ignore[type-var]


def test_a_killed_leaders_job_is_rescued_without_waiting_for_a_new_leader(any_url,
                                                                          effects_sqlite,
                                                                          workers: Workers):
    app = open_app(any_url)
    leader = workers.start(any_url, effects_sqlite, app=APP, env=QUICK_STOP)
    wait_until(lambda: any(lease.key == LEADER_LEASE_KEY and lease.owner
                           and f":{leader.pid}:" in lease.owner
                           for lease in app.store.lease_list()),
               timeout=60, message="the first worker leads")
    handle = app.enqueue_job("recovery.hold", {"seconds": 60.0})
    (first,) = wait_until(lambda: starts(effects_sqlite), timeout=60, message="the job started")
    assert first.pid == leader.pid
    other = workers.start(any_url, effects_sqlite, app=APP, env=QUICK_STOP)
    wait_until(lambda: registered(app, [other]), timeout=60, message="the second worker started")
    (term,) = [lease for lease in app.store.lease_list() if lease.key == LEADER_LEASE_KEY]
    leader.send_signal(signal.SIGKILL)
    leader.wait(10)
    (successor,) = wait_until(lambda: starts(effects_sqlite, above=first.fence), timeout=60,
                              message="the other worker took the job over")
    job = app.store.job_get(handle.id)
    assert job is not None and successor.pid == other.pid
    (error,) = job.errors
    assert error.kind == ErrorKind.WORKER_GONE
    assert term.expires_at is not None and error.at < term.expires_at, (
        "the rescue waited for the dead leader's term to run out")
    workers.stop_all()


def stop_outside_a_write(url: str, pid: int) -> None:
    """SIGSTOP ``pid``; on SQLite, again if it stopped inside a write transaction (a lease
    renewal, its heartbeat, a maintenance pass): a process stopped there holds the database's
    write lock and freezes every worker until it resumes — the embedded store's documented
    limit, not what this test is about."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:") else None
    for _ in range(20):
        os.kill(pid, signal.SIGSTOP)
        if path is None:
            return
        probe = sqlite3.connect(path, timeout=0.5, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # locked by the stopped process
            os.kill(pid, signal.SIGCONT)
        finally:
            probe.close()
    raise AssertionError("the worker held the write lock at every try")


def test_a_paused_worker_is_not_declared_dead_and_its_late_write_is_refused(any_url,
                                                                          effects_sqlite,
                                                                          workers: Workers):
    """SIGSTOP: the process lives and holds its liveness lock, so nobody may prove it dead; its
    job is rescued only when its lease expires, and the zombie's write is then refused."""
    # One thread and no prefetch: a busy worker then sends no claims, so the SIGSTOP does not
    # land inside a claim transaction (on SQLite a process stopped there would hold the
    # database's write lock, and nobody could rescue anything until it resumed).
    env = {**QUICK_STOP, "ONCELY_LEASE_TTL": "3", "ONCELY_LEADER_TTL": "3",
           "ONCELY_CONCURRENCY": "1", "ONCELY_PREFETCH": "0"}
    app = open_app(any_url)
    handle = app.enqueue_job("recovery.hold", {"seconds": 6.0, "deaf": True})
    procs = [workers.start(any_url, effects_sqlite, app=APP, env=env) for _ in range(2)]
    (first,) = wait_until(lambda: starts(effects_sqlite), timeout=60, message="the job started")
    until = lease_until(app, handle.id)
    stop_outside_a_write(any_url, first.pid)
    try:
        wait_until(lambda: starts(effects_sqlite, above=first.fence), timeout=60,
                   message="another worker took the job over once the lease expired")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    wait_until(lambda: first.fence in effect_fences(effects_sqlite, "rejected"), timeout=60,
               message="the zombie tried its fenced write")
    job = app.store.job_get(handle.id)
    assert job is not None
    error = job.errors[0]
    assert error.kind == ErrorKind.LEASE_EXPIRED and error.message.startswith("rescued (1 of 3)")
    assert error.at >= until
    assert first.fence not in effect_fences(effects_sqlite, "done")
    assert proc_of(procs, first.pid).poll() is None  # the zombie lives on as a worker
    workers.stop_all()


@pytest.mark.postgres
def test_a_worker_whose_liveness_session_is_terminated_fences_itself(pg_schema, effects_sqlite,
                                                                     workers: Workers):
    url, _ = pg_schema
    app = open_app(url)
    handle = app.enqueue_job("recovery.hold", {"seconds": 60.0})
    procs = [workers.start(url, effects_sqlite, app=APP, env=QUICK_STOP) for _ in range(2)]
    (first,) = wait_until(lambda: starts(effects_sqlite), timeout=60, message="the job started")
    until = lease_until(app, handle.id)
    index = procs.index(proc_of(procs, first.pid))
    with app.store.transaction() as conn:
        backend = conn.execute(
            "SELECT l.pid FROM pg_locks AS l JOIN oncely_workers AS w"
            " ON l.objid = split_part(w.liveness, '@', 1)::bigint::oid"
            " WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND w.pid = %s",
            (first.pid,)).fetchone()[0]
        conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
    # Rescued, by the other worker or by itself once it fenced itself, and run again (by either).
    wait_until(lambda: starts(effects_sqlite, above=first.fence), timeout=60,
               message="the job was rescued and ran again")
    wait_until(lambda: "worker.liveness_lost" in workers.log(index), timeout=30,
               message="the worker noticed it lost its lock")
    wait_until(lambda: "worker.liveness_restored" in workers.log(index), timeout=30,
               message="the worker took a new lock")
    job = app.store.job_get(handle.id)
    assert job is not None
    (error,) = job.errors
    assert error.kind == ErrorKind.WORKER_GONE and error.at < until
    assert first.fence not in effect_fences(effects_sqlite, "done")
    assert procs[index].poll() is None
    # Holding a lock again, it claims again: stop the other worker and give it a job.
    procs[1 - index].send_signal(signal.SIGTERM)
    procs[1 - index].wait(60)
    app.store.job_cancel(handle.id, datetime.now(UTC), "test over")
    again = app.enqueue_job("recovery.hold", {"seconds": 0.0})
    wait_until(lambda: again.refresh().state == JobState.SUCCEEDED, timeout=60,
               message="the worker that fenced itself claimed again")
    workers.stop_all()
