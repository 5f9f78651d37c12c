"""The worker's prefetch buffer, on both stores: jobs claimed beyond the free handler threads keep
their leases, are handed back when no thread begins them within ``prefetch_wait``, and are
handed back at once on shutdown. Time moves only when the test advances the frozen clock; the
keeper's checks are also called directly, so what happens at which instant does not depend on
the machine's speed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import oncely
from oncely.observe.events import Event
from oncely.testing import wait_until
from oncely.types import JobState


class Rig:
    def __init__(self, url: str, prefetch_wait: float) -> None:
        self.clock = oncely.FrozenClock("2026-06-01T08:00:00+00:00")
        settings = oncely.Settings(poll_interval=0.05, shutdown_grace=30, lease_ttl=30,
                                   prefetch=1, prefetch_wait=prefetch_wait)
        self.app = oncely.App(url, clock=self.clock, settings=settings)
        self.gate = threading.Event()
        self.slow_started = threading.Event()
        self.ran: list[int] = []
        self.events: list[Event] = []
        self.app.events.subscribe(self.events.append)

        @self.app.task(name="slow", priority=10)
        def slow(ctx: oncely.JobContext) -> None:
            self.slow_started.set()
            assert self.gate.wait(30)

        @self.app.task(name="quick")
        def quick(ctx: oncely.JobContext) -> None:
            self.ran.append(ctx.job_id)

        self.slow = slow
        self.quick = quick

    def named(self, name: str, **fields: object) -> list[Event]:
        return [e for e in list(self.events)
                if e.name == name and all(e.fields.get(k) == v for k, v in fields.items())]

    def start_with_a_full_buffer(self) -> tuple[Any, list[Any]]:
        """One handler thread busy with the slow job, a quick job queued behind it (their
        handles). Before any job has ended the buffer holds as many jobs as there are threads."""
        slow = self.slow.enqueue()
        quick = [self.quick.enqueue()]
        self.worker = self.app.worker(concurrency=1, maintenance=False).start()
        assert self.slow_started.wait(10)
        wait_until(lambda: len(self.named("job.claimed")) == 2, message="both claimed")
        return slow, quick


@pytest.fixture
def rig(any_url: str) -> Iterator[Rig]:
    made: list[Rig] = []

    def make(prefetch_wait: float) -> Rig:
        made.append(Rig(any_url, prefetch_wait))
        return made[-1]

    yield make  # type: ignore[misc]
    for r in made:
        r.gate.set()
        if hasattr(r, "worker"):
            r.worker.stop(force=True, timeout=30)
        r.app.close()


def test_a_queued_job_is_released_once_it_waited_prefetch_wait(rig):
    r: Rig = rig(prefetch_wait=1.0)
    slow, quick = r.start_with_a_full_buffer()
    enqueued_run_at = {job.id: job.refresh().run_at for job in quick}
    keeper, mono = r.worker._keeper, r.clock.monotonic()
    keeper.enforce(mono)
    r.clock.advance(0.99)
    keeper.enforce(r.clock.monotonic())
    assert r.named("job.released") == []  # within the bound: they stay in the buffer
    for job in quick:
        assert job.refresh().state == JobState.RUNNING
    r.clock.advance(0.01)
    keeper.enforce(r.clock.monotonic())
    wait_until(lambda: len(r.named("job.released", reason="prefetch")) == 1,
               message="the queued job released")
    for job in quick:
        back = wait_until(lambda j=job: (x := j.refresh()).state == JobState.RETRYABLE and x,
                          message="released job recorded")
        assert back.attempt == 0  # refunded: it never started
        assert back.errors == ()
        assert back.lease_owner is None
        assert back.run_at == enqueued_run_at[job.id]  # it keeps its place in line
    assert r.ran == []  # the handler thread never began them
    assert slow.refresh().state == JobState.RUNNING
    r.gate.set()  # the slow job ends; the released jobs are claimed again and run
    wait_until(lambda: len(r.ran) == 1, message="the released job ran")
    assert sorted(r.ran) == sorted(job.id for job in quick)


def test_queued_jobs_keep_their_leases_renewed(rig):
    r: Rig = rig(prefetch_wait=600.0)
    _, quick = r.start_with_a_full_buffer()
    r.clock.advance(timedelta(seconds=20))
    r.worker._keeper.renew(r.clock.monotonic())  # what the renewer thread does every TTL/3
    expected = r.clock.now() + timedelta(seconds=30)
    for job in quick:
        current = job.refresh()
        assert current.state == JobState.RUNNING
        assert current.lease_expires_at == expected
    assert r.named("lease.lost") == [] and r.named("job.released") == []


def test_shutdown_releases_queued_jobs_before_waiting_for_running_ones(rig):
    r: Rig = rig(prefetch_wait=600.0)
    slow, quick = r.start_with_a_full_buffer()
    stopper = threading.Thread(target=r.worker.stop, kwargs={"timeout": 30})
    stopper.start()
    wait_until(lambda: len(r.named("job.released", reason="shutdown")) == 1,
               message="queued jobs released on shutdown")
    for job in quick:
        wait_until(lambda j=job: j.refresh().state == JobState.RETRYABLE,
                   message="released job recorded")
        assert job.refresh().attempt == 0
    assert slow.refresh().state == JobState.RUNNING  # still inside its shutdown grace
    r.gate.set()
    stopper.join(30)
    assert slow.refresh().state == JobState.SUCCEEDED
    assert r.ran == []
