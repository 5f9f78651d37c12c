"""Process isolation (``isolation="process"``), with a worker in this process and real child
processes, on every store: what the handler's context offers in the child, and that the child
is really gone — not merely asked — when its job is cancelled, its lease is lost or the worker
shuts down."""

from __future__ import annotations

import os

import pytest

import oncely
from oncely.testing import wait_until, worker_running
from oncely.types import ErrorKind, JobState


@pytest.fixture
def app(any_url):
    from tests.apps import unruly

    settings = oncely.Settings(poll_interval=0.05, lease_ttl=3, shutdown_grace=0.5)
    application = oncely.App(any_url, settings=settings)
    application.tasks = dict(unruly.app.tasks)
    application.migrate()
    yield application
    application.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def child_pid(app: oncely.App, handle) -> int | None:
    checkpoint = handle.refresh().checkpoint
    return checkpoint["pid"] if checkpoint else None


def test_the_context_works_across_the_process_boundary(app):
    handle = app.enqueue_job("probe", {"label": "x"})
    with worker_running(app, concurrency=1):
        job = wait_until(lambda: (j := handle.refresh()).state.finished and j, timeout=60)
    assert job.state == JobState.SUCCEEDED, job.errors
    assert job.result["pid"] != os.getpid()
    assert job.result | {"pid": 0} == {
        "pid": 0, "fence": job.fence, "attempt": 1, "label": "x", "args": {"label": "x"},
        "checkpoint": {"step": 1}, "tasks": sorted(app.tasks)}
    assert job.checkpoint == {"step": 1}


def test_cancel_kills_the_child_that_ignores_it(app):
    handle = app.enqueue_job("deaf", {})
    with worker_running(app, concurrency=1):
        pid = wait_until(lambda: child_pid(app, handle), timeout=60, message="the child runs")
        app.store.job_cancel(handle.id, app.clock.now(), "operator said so")
        job = wait_until(lambda: (j := handle.refresh()).state.finished and j, timeout=30)
        assert gone(pid), "the child outlived its cancelled job"
    assert job.state == JobState.CANCELLED
    assert "killed by SIGKILL" in job.errors[-1].message


def test_a_lost_lease_kills_the_child_at_once(app):
    """Another session moves the job's fence on (as a takeover would): the next renewal is
    refused, and the child is killed before anyone could run the job again."""
    events: list[str] = []
    app.events.subscribe(lambda event: events.append(event.name))
    handle = app.enqueue_job("deaf", {})
    mark = "?" if app.store.dialect == "sqlite" else "%s"
    with worker_running(app, concurrency=1, maintenance=False):
        pid = wait_until(lambda: child_pid(app, handle), timeout=60, message="the child runs")
        with app.store.transaction() as conn:
            conn.execute(f"UPDATE oncely_jobs SET fence = fence + 1 WHERE id = {mark}",
                         (handle.id,))
        wait_until(lambda: "lease.lost" in events, timeout=30, message="the lease was lost")
        wait_until(lambda: gone(pid), timeout=10, message="the child was killed")
    assert handle.refresh().state == JobState.RUNNING  # nothing recorded: the fence moved on


def test_shutdown_kills_the_child_before_it_releases_the_job(app):
    handle = app.enqueue_job("deaf", {})
    with worker_running(app, concurrency=1):
        pid = wait_until(lambda: child_pid(app, handle), timeout=60, message="the child runs")
    assert gone(pid), "the child outlived the worker"
    job = handle.refresh()
    assert job.state == JobState.RETRYABLE and job.attempt == 0
    assert job.errors[-1].kind == ErrorKind.SHUTDOWN
