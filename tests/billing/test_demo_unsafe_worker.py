"""The demo's unsafe switches are its own: the incident app's workers never renew a lease and
never self-fence (a Worker subclass the demo sets as ``app.worker_class``), while the engine's
workers, with no setting to turn it off, always do. Frozen clock, real store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

import oncely
from oncely.testing import wait_until
from oncely_billing.demo.app import IncidentWorker

START = datetime(2026, 3, 10, 0, 40, tzinfo=UTC)


@pytest.fixture
def app(tmp_path) -> Iterator[oncely.App]:
    app = oncely.App(f"sqlite:///{tmp_path / 'o.db'}", clock=oncely.FrozenClock(START),
                     settings=oncely.Settings(lease_ttl=30.0))
    yield app
    app.close()


def held_past_its_lease(app: oncely.App, worker: oncely.Worker) -> tuple[oncely.Job, list[str]]:
    """Run one job on ``worker``, move the clock past its lease, and return the job as stored
    and the lease events the worker emitted meanwhile."""
    release = threading.Event()
    seen: list[str] = []
    app.events.subscribe(lambda event: seen.append(event.name)
                         if event.name.startswith("lease.") else None)

    @app.task(name="long", singleton=True)
    def long(ctx: oncely.JobContext) -> None:
        release.wait(30)

    job = app.enqueue("long")
    worker.start()
    try:
        wait_until(lambda: app.read.job(job.id).state == oncely.JobState.RUNNING)
        claimed = app.read.job(job.id)
        app.clock.advance(40)  # past the 30 s lease
        wait_until(lambda: seen or app.read.job(job.id).lease_expires_at
                   != claimed.lease_expires_at, timeout=2, message="a renewal or self-fence")
    except AssertionError:
        pass  # the incident's worker does neither: that is what is measured below
    finally:
        stored = app.read.job(job.id)
        release.set()
        worker.stop(timeout=30)
    assert stored is not None
    return stored, seen


def test_the_engine_worker_renews_its_leases(app: oncely.App) -> None:
    job, seen = held_past_its_lease(app, app.worker(concurrency=1, maintenance=False))
    assert job.lease_expires_at > app.clock.now() or "lease.self_fenced" in seen


def test_the_incident_worker_lets_the_lease_run_out_under_a_running_job(app: oncely.App) -> None:
    app.worker_class = IncidentWorker
    job, seen = held_past_its_lease(app, app.worker(concurrency=1, maintenance=False))
    assert job.state == oncely.JobState.RUNNING and job.lease_expires_at < app.clock.now()
    assert seen == []  # no renewal, no self-fencing: the handler keeps running
    assert not hasattr(oncely.Settings(), "heartbeat")
