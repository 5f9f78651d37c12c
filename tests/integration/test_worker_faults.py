"""A worker facing faults it did not expect, in one process, on every store."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import oncely
from oncely.errors import StoreError
from oncely.store.params import JobFilter
from oncely.testing import wait_until, worker_running
from oncely.types import JobState


def test_an_unexpected_error_while_recording_outcomes_frees_the_handler_slot(any_url):
    """Recording outcomes fails once with an error that is not an outage (a driver bug, say).
    Retrying the batch would fail the same way: the worker records its outcomes one by one
    instead — the job is recorded once, and the handler slot is freed (with concurrency 1 the
    worker would otherwise never claim again)."""
    settings = oncely.Settings(poll_interval=0.05, lease_ttl=2, leader_ttl=2,
                               maintenance_interval=0.2, shutdown_grace=0.5)
    app = oncely.App(any_url, settings=settings)

    @app.task(name="work", retry=oncely.RetryPolicy(attempts=3, backoff="fixed", base_delay=0))
    def work(ctx: oncely.JobContext, n: int) -> int:
        return n

    real = app.store.job_finish_many
    broken: list[list[int]] = []

    def finish_many(params):  # type: ignore[no-untyped-def]
        if not broken:
            broken.append([item.job_id for item in params])
            raise RuntimeError("a bug below the store seam")
        return real(params)

    app.store.job_finish_many = finish_many  # type: ignore[method-assign]
    first = work.enqueue(n=1)
    try:
        with worker_running(app, concurrency=1):
            wait_until(lambda: broken, timeout=15, message="the first outcome failed to record")
            second = work.enqueue(n=2)
            wait_until(lambda: second.refresh().state == JobState.SUCCEEDED, timeout=15,
                       interval=0.05, message="the worker claimed again")
            wait_until(lambda: first.refresh().state == JobState.SUCCEEDED, timeout=15,
                       interval=0.05, message="the first job was recorded on its own")
    finally:
        app.close()
    assert broken == [[first.id]]
    job = first.refresh()
    assert job.attempt == 1 and job.errors == () and job.result == 1


def test_a_renewal_that_hangs_does_not_keep_a_job_running_past_its_lease(any_url):
    """The lease keeper's renewal blocks — here on a lock another session holds (the job's row
    on PostgreSQL, the write lock on SQLite); a network partition does the same. The worker must
    still stop the job at its local deadline, before the lease it could not renew runs out and
    another worker may take the job over (self-fencing), not whenever the renewal returns."""
    # The local deadline comes a sixth of the TTL before the lease runs out: 1 s here, room
    # for a loaded machine to schedule the keeper and the handler.
    settings = oncely.Settings(poll_interval=0.05, lease_ttl=6, shutdown_grace=0.5)
    app = oncely.App(any_url, settings=settings)
    started, stopped_at = threading.Event(), []

    @app.task(name="long")
    def long(ctx: oncely.JobContext) -> None:
        started.set()
        while not ctx.cancelled:
            time.sleep(0.01)
        stopped_at.append(datetime.now(UTC))

    handle = long.enqueue()
    blocker = oncely.App(any_url)  # another session
    mark = "?" if blocker.store.dialect == "sqlite" else "%s"
    try:
        with worker_running(app, concurrency=1, maintenance=False):
            assert started.wait(15), "the job did not start"
            with blocker.store.transaction() as conn:
                conn.execute(f"UPDATE oncely_jobs SET priority = priority WHERE id = {mark}",
                             (handle.id,))
                job = app.store.job_get(handle.id)  # reads are not blocked
                assert job is not None and job.lease_expires_at is not None
                left = (job.lease_expires_at - datetime.now(UTC)).total_seconds()
                wait_until(lambda: stopped_at, timeout=left + 2, interval=0.01,
                           message="the handler was told to stop while its renewal hung")
    finally:
        blocker.close()
        app.close()
    assert stopped_at[0] < job.lease_expires_at, (
        f"stopped at {stopped_at[0]}, after its lease ran out at {job.lease_expires_at}")


def test_a_batch_the_store_refuses_is_recorded_job_by_job(any_url):
    """The store refuses whole batches that hold one poisoned outcome, and that job's own
    outcome too (as a data error would). Only that job ends failed, with the reason; every
    other job of the batch is recorded once, none runs again."""
    settings = oncely.Settings(poll_interval=0.05, lease_ttl=5, shutdown_grace=0.5)
    app = oncely.App(any_url, settings=settings)
    ran: list[int] = []

    @app.task(name="work", retry=oncely.RetryPolicy(attempts=3, backoff="fixed", base_delay=0))
    def work(ctx: oncely.JobContext, n: int) -> int:
        ran.append(n)
        return n

    def poisoned(item) -> bool:  # type: ignore[no-untyped-def]
        return item.state == JobState.SUCCEEDED and item.result == 13

    real_many, real_one = app.store.job_finish_many, app.store.job_finish

    def finish_many(params):  # type: ignore[no-untyped-def]
        if any(poisoned(item) for item in params):
            raise StoreError("invalid byte sequence in a row (a data error)")
        return real_many(params)

    def finish_one(item):  # type: ignore[no-untyped-def]
        if poisoned(item):
            raise StoreError("invalid byte sequence in a row (a data error)")
        return real_one(item)

    app.store.job_finish_many = finish_many  # type: ignore[method-assign]
    app.store.job_finish = finish_one  # type: ignore[method-assign]
    app.enqueue_many("work", [{"n": n} for n in range(60)])
    try:
        with worker_running(app, concurrency=8):
            wait_until(lambda: sum(row.count for row in app.store.job_counts()
                                   if row.state in ("succeeded", "failed")) == 60,
                       timeout=60, interval=0.05, message="60 jobs finished")
        jobs = {job.args["n"]: job for job in app.store.job_list(JobFilter(limit=100))}
    finally:
        app.close()
    assert sorted(ran) == list(range(60)), "a job ran twice (or never)"
    assert jobs[13].state == JobState.FAILED
    assert jobs[13].errors[-1].message.startswith("outcome not storable: StoreError: invalid")
    assert all(job.state == JobState.SUCCEEDED and job.result == n and job.attempt == 1
               for n, job in jobs.items() if n != 13)
