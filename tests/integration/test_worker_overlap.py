"""The claim loop and the completer's writes overlap where the store writes concurrently.

The completer's batch write is held (a real store whose ``job_finish_many`` waits for the test):
on PostgreSQL the worker claims its room again meanwhile, and stops at twice its room of leases;
on SQLite, whose writes take turns, it waits for the write. Either way every job then runs once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import oncely
from oncely.testing import wait_until, worker_running
from oncely.types import JobState

ROOM = 2  # two handler threads, no prefetch


def running_in_store(app: oncely.App) -> int:
    return sum(row.count for row in app.store.job_counts() if row.state == JobState.RUNNING)


def test_claims_go_on_while_outcomes_are_written_up_to_twice_the_room(any_url: str) -> None:
    settings = oncely.Settings(poll_interval=0.05, prefetch=0, lease_ttl=30, shutdown_grace=5)
    app = oncely.App(any_url, settings=settings)
    ran: list[int] = []

    @app.task(name="noop")
    def noop(ctx: oncely.JobContext, n: int) -> int:
        ran.append(n)
        return n

    writing, release = threading.Event(), threading.Event()
    real = app.store.job_finish_many

    def held(batch: Sequence[Any]) -> Any:
        writing.set()
        assert release.wait(30), "the test never let the write go"
        return real(batch)

    app.store.job_finish_many = held  # type: ignore[method-assign]
    jobs = [noop.enqueue(n=n) for n in range(10)]
    overlaps = not app.store.writes_take_turns
    try:
        with worker_running(app, concurrency=ROOM, maintenance=False) as worker:
            assert writing.wait(15), "no outcome reached the completer"
            held_leases = 2 * ROOM if overlaps else ROOM
            wait_until(lambda: running_in_store(app) == held_leases and (
                len(worker.running_jobs()) == held_leases), timeout=15,
                message=f"{held_leases} jobs claimed while the first outcomes are written")
            # the room is taken: held outcomes count beyond one room of them, queued and
            # running jobs always
            assert worker.holding(ROOM) == ROOM
            release.set()
            wait_until(lambda: all(job.refresh().state == JobState.SUCCEEDED for job in jobs),
                       timeout=30, message="every job recorded")
    finally:
        release.set()
        app.close()
    assert sorted(ran) == list(range(10))
    assert all(job.job.attempt == 1 for job in jobs)
