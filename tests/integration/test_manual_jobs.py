"""Manual jobs of a scheduled task share the schedule's singleton key, on both stores.

The incident's "run it now on start" (``task.enqueue()`` at import, beside a schedule) must not
overlap a slot run: the manual job waits for the key while a slot run holds it, and a slot that
comes due while a manual run holds the key is recorded ``skipped_overlap`` (overlap ``skip``).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

import oncely
from oncely.testing import wait_until, worker_running
from oncely.types import JobState


@pytest.fixture
def app(any_url):
    settings = oncely.Settings(poll_interval=0.05, shutdown_grace=1, lease_ttl=30,
                               enqueue_interval=0.05)
    application = oncely.App(any_url, settings=settings)
    yield application
    application.close()


def test_a_scheduled_tasks_manual_job_takes_the_schedules_key(app):
    @app.task(name="thresholds")
    def thresholds(ctx):
        return None

    @app.task(name="loose")
    def loose(ctx):
        return None

    @app.task(name="opted-out", singleton=False)
    def opted_out(ctx):
        return None

    @app.task(name="parallel")
    def parallel(ctx):
        return None

    app.schedule("hourly", thresholds, cron="35 * * * *")
    app.schedule("hourly-opted-out", opted_out, cron="35 * * * *")
    app.schedule("hourly-parallel", parallel, cron="35 * * * *", overlap="allow")
    app.migrate()

    assert thresholds.enqueue().job.singleton_key == "thresholds"
    assert loose.enqueue().job.singleton_key is None  # not scheduled: no key
    assert opted_out.enqueue().job.singleton_key is None  # singleton=False wins
    assert parallel.enqueue().job.singleton_key is None  # its schedule allows overlap


def test_a_manual_run_waits_for_the_running_slot_run(app):
    release = threading.Event()
    running: list[int] = []
    overlaps: list[tuple[int, ...]] = []
    lock = threading.Lock()

    @app.task(name="usage")
    def usage(ctx):
        with lock:
            running.append(ctx.job_id)
            if len(running) > 1:
                overlaps.append(tuple(running))
        try:
            release.wait(10)
        finally:
            with lock:
                running.remove(ctx.job_id)

    app.schedule("usage-every-hour", usage, every=timedelta(hours=1))
    app.migrate()
    slot_job = app.trigger("usage-every-hour")
    assert slot_job is not None
    with worker_running(app, concurrency=4):
        wait_until(lambda: slot_job.refresh().state == JobState.RUNNING, timeout=20,
                   message="the slot run started")
        manual = usage.enqueue()  # the incident's immediate run, while the slot run holds the key
        # Let the worker (polling every 50 ms, with free threads) try to claim it a few times.
        time.sleep(0.5)
        assert manual.refresh().state == JobState.AVAILABLE, "the manual run started beside it"
        release.set()
        wait_until(lambda: manual.refresh().state == JobState.SUCCEEDED, timeout=20,
                   message="the manual run ran after the slot run")
    assert slot_job.refresh().state == JobState.SUCCEEDED
    assert overlaps == []
    assert manual.refresh().started_at >= slot_job.refresh().finished_at


def test_a_dynamically_scheduled_tasks_manual_job_takes_the_key_in_every_process(app, any_url):
    @app.task(name="rollup")
    def rollup(ctx):
        return None

    @app.task(name="rollup-opted-out", singleton=False)
    def opted_out(ctx):
        return None

    app.migrate()
    assert rollup.enqueue().job.singleton_key is None  # not scheduled yet
    app.create_schedule("nightly", "rollup", cron="0 3 * * *")
    app.create_schedule("nightly-opted-out", "rollup-opted-out", cron="0 3 * * *")
    assert rollup.enqueue().job.singleton_key == "rollup"
    assert opted_out.enqueue().job.singleton_key is None
    # another process (an App of its own) that declares no schedule reads the stored ones
    other = oncely.App(any_url)
    other.tasks = dict(app.tasks)
    try:
        assert other.enqueue("rollup").job.singleton_key == "rollup"
        assert other.enqueue_many("rollup", [{}, {}])[1].job.singleton_key == "rollup"
        assert other.enqueue("rollup-opted-out").job.singleton_key is None
    finally:
        other.close()


def test_an_enqueue_above_the_schedule_declaration_takes_the_key(app, any_url):
    """The incident's module with the lines swapped: ``task.enqueue()`` runs before
    ``app.schedule(...)``. On a store that never held the schedule the job takes the key when
    the worker registers its schedules at start; on one that holds it, at enqueue."""

    @app.task(name="thresholds")
    def thresholds(ctx):
        return None

    @app.task(name="loose")
    def loose(ctx):
        return None

    app.migrate()
    early = thresholds.enqueue()
    plain = loose.enqueue()
    app.schedule("hourly", thresholds, cron="35 * * * *")
    assert early.refresh().singleton_key is None  # nothing is written at declaration
    app.register_schedules()  # what a worker does when it starts, before its first claim
    assert early.refresh().singleton_key == "thresholds"
    assert plain.refresh().singleton_key is None
    # the next deploy imports the module again: its early enqueue finds the stored schedule
    redeployed = oncely.App(any_url)
    redeployed.task(name="thresholds")(thresholds.fn)
    try:
        assert redeployed.enqueue("thresholds").job.singleton_key == "thresholds"
    finally:
        redeployed.close()
