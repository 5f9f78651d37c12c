"""Release wakes waiters: when a singleton key or a limited queue's place frees, the job waiting
for it is claimed on a wake-up, not at the next poll.

The worker polls once an hour here, so a waiting job that starts within the test's deadline can
only have been woken (PostgreSQL: the finish's NOTIFY; SQLite: the commit, seen in-process at once
and by other processes through ``data_version``). What is asserted is the order of things: the
worker went idle with the job held back, the first job ended, then the second started.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

import oncely
from oncely.testing import wait_until
from oncely.types import JobState
from oncely.worker.worker import Worker

POLL = 3600.0


@pytest.fixture(params=["singleton", "max_running"])
def gated(request: pytest.FixtureRequest, any_url: str) -> Iterator[tuple[oncely.App, oncely.Task,
                                                                           threading.Event,
                                                                           list[str]]]:
    app = oncely.App(any_url, settings=oncely.Settings(poll_interval=POLL, shutdown_grace=1))
    gate, order = threading.Event(), []
    options: dict[str, object] = {"singleton": True}
    if request.param == "max_running":
        app.queue("narrow", max_running=1)
        options = {"queue": "narrow"}

    @app.task(name="gated", **options)  # type: ignore[arg-type]
    def gated_task(ctx: oncely.JobContext, n: int) -> None:
        order.append(f"start {n}")
        if n == 1:
            gate.wait(60)
        order.append(f"end {n}")

    yield app, gated_task, gate, order
    app.close()


def test_a_freed_place_wakes_the_job_waiting_for_it(gated) -> None:
    app, task, gate, order = gated
    claims: list[int] = []
    real_claim = app.store.job_claim

    def counting_claim(params):  # type: ignore[no-untyped-def]
        result = real_claim(params)
        claims.append(len(result.jobs))
        return result

    app.store.job_claim = counting_claim  # type: ignore[method-assign]
    first = task.enqueue(n=1)
    worker = Worker(app, concurrency=2).start()
    try:
        wait_until(lambda: order == ["start 1"], timeout=30, message="the first job started")
        seen = len(claims)
        second = task.enqueue(n=2)

        def idle_after_enqueue() -> bool:
            # A worker opens its LISTEN connection on its first wait: a notification sent before
            # that is not heard. The first claim after ``seen`` may come before any wait (the
            # worker claims again at once after a claim that found work); a second one came
            # from a wait that heard a nudge, so the connection is open for the finish's.
            app.store.notify_work("default")
            return len(claims) >= seen + 2 and claims[-1] == 0

        # Woken, its claim found the second job held back, and it idles.
        wait_until(idle_after_enqueue, timeout=30, interval=0.2,
                   message="a claim that held the second job back")
        assert second.refresh().state == JobState.AVAILABLE
        gate.set()
        wait_until(lambda: second.refresh().state == JobState.SUCCEEDED, timeout=30,
                   message="the second job ran once the first freed its place")
    finally:
        worker.stop(timeout=0)
        # Wake the idle claim loop so the worker sees it must stop (it polls once an hour).
        app.store.worker_heartbeat("nobody", datetime.now(UTC))
        app.store.notify_work("default")
        worker.stop(timeout=30)
    assert first.refresh().state == JobState.SUCCEEDED
    assert order == ["start 1", "end 1", "start 2", "end 2"]
