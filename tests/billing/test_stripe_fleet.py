"""Stripe pressure is fleet-wide: a half-open breaker admits exactly one trial however many
sender threads ask, and the breaker and throttle of one worker's run are what the next run, on
any worker, starts from."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import oncely
from oncely.testing import FrozenClock, assert_enqueued, wait_until
from oncely_billing import stripe_fleet
from oncely_billing.demo.stripe_stub import StripeStub
from oncely_billing.meter import TASK_NAME
from oncely_billing.resilience import CircuitBreaker, CircuitOpen
from oncely_billing.stripe_client import StripeMeterClient, StripeUnavailable

from .test_stripe_client import event, settings
from .test_stripe_meter import Harness


@pytest.fixture
def stub(clock: FrozenClock) -> Iterator[StripeStub]:
    with StripeStub(clock=clock) as server:
        yield server


@pytest.fixture
def clock() -> FrozenClock:
    from .test_stripe_meter import START

    return FrozenClock(START)


def test_half_open_admits_exactly_one_trial_among_32_threads() -> None:
    now = [0.0]
    breaker = CircuitBreaker("stripe", failure_threshold=1, reset_after=30.0,
                             monotonic=lambda: now[0])
    breaker.record_failure()
    now[0] = 31.0  # reset elapsed: half-open
    start = threading.Barrier(32)
    admitted: list[int] = []
    refused: list[int] = []

    def call(number: int) -> None:
        start.wait()
        try:
            breaker.before_call()
        except CircuitOpen:
            refused.append(number)
        else:
            admitted.append(number)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(call, range(32)))
    assert len(admitted) == 1 and len(refused) == 31 and breaker.state == "half_open"
    breaker.record_failure()  # the trial failed: open again, for another reset period
    with pytest.raises(CircuitOpen):
        breaker.before_call()


def test_32_sender_threads_send_one_trial_to_a_stripe_still_down(stub: StripeStub) -> None:
    client = StripeMeterClient(settings(stub, concurrency=32, attempts=1, breaker_threshold=1,
                                        breaker_reset=60))
    client.breaker.trip(0.0)  # opened a reset period ago: the next call is the trial
    stub.configure(outage=True, delay=0.2)  # the trial is slow, so the others arrive meanwhile
    start = threading.Barrier(32)

    def send(number: int) -> str:
        start.wait()
        try:
            client.send(event(org=f"org{number}", customer=f"cus_{number}"))
        except StripeUnavailable:
            return "unavailable"
        return "sent"

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(send, range(32)))
    assert outcomes == ["unavailable"] * 32
    assert stub.stats().requests == 1  # one trial reached Stripe, not 32
    assert client.breaker.state == "open"


def test_the_next_run_on_another_worker_inherits_the_breaker_and_the_rate(
    sqlite_url: str, clock: FrozenClock, stub: StripeStub
) -> None:
    first = Harness(sqlite_url, clock, stub)  # two workers: separate clients, one store
    second = Harness(sqlite_url, clock, stub)
    first.metering.client().settings = first.metering.client().settings.with_(
        breaker_reset=600.0)
    stub.configure(outage=True)
    assert first.run().state == oncely.JobState.RETRYABLE
    assert first.metering.client().breaker.state == "open"
    requests = stub.stats().requests

    stalled = second.run()  # Stripe is paused fleet-wide: not one call from this worker
    assert stalled.state == oncely.JobState.RETRYABLE
    assert "fleet-wide" in stalled.job.errors[-1].message
    assert stub.stats().requests == requests

    stub.heal()
    clock.advance(601)
    caught_up = second.run()  # its first call is the fleet's one trial; then on it goes
    assert caught_up.state == oncely.JobState.SUCCEEDED, caught_up.job.errors
    assert second.metering.client().breaker.state == "closed"
    assert stripe_fleet._read(second.app, stripe_fleet.BREAKER_KEY) == {}

    second.metering.client().throttle.rate = 40.0  # as a 429 storm would leave it
    stripe_fleet.after_run(second.app, second.metering.client(), clock.now())
    third = Harness(sqlite_url, clock, stub)
    clock.advance(3600)
    assert third.run().state == oncely.JobState.SUCCEEDED
    assert third.metering.client().rate < 5000 / 2  # started from the fleet's lowered pace
    for harness in (first, second, third):
        harness.app.close()




def test_three_worker_processes_share_one_stripe_rate(
    workers: Any, store_url: str, tmp_path: Path
) -> None:
    from tests.apps import stripe_fleet as fleet

    began_hour = int(time.time() // 3600)
    with StripeStub() as stub:  # the real clock: the workers run on it
        # Stripe's side counts a 429 beyond 1.5x the configured rate in any rolling second: a
        # fleet sending 3x (one full-rate throttle per worker) would be refused at once.
        stub.configure(rate_limit=fleet.RATE * 1.5)
        app, _ = fleet.make(store_url, stub.url)
        app.enqueue_job(TASK_NAME, {}, unique_key="fleet-test-start")
        env = {"ONCELY_STRIPE_API_BASE": stub.url}
        for _ in range(3):
            workers.start(store_url, str(tmp_path / "effects.db"), "--queues", "billing",
                          app="tests.apps.stripe_fleet:app", env=env)

        def all_hours_reported() -> bool:
            runs = assert_enqueued(app, TASK_NAME)
            return (stub.stats().accepted >= fleet.HOURS * fleet.ORGS * 2
                    and all(job.state.finished for job in runs))

        wait_until(all_hours_reported, timeout=180, interval=0.2,
                   message="every due hour reported by the fleet")
        workers.stop_all()
        stats = stub.stats()
        runs = assert_enqueued(app, TASK_NAME)
        app.close()
    # The real clock: an hour that ended during the test is due too.
    due = range(fleet.HOURS, fleet.HOURS + int(time.time() // 3600) - began_hour + 1)
    assert len(runs) in due and all(r.state == oncely.JobState.SUCCEEDED for r in runs)
    assert stats.accepted == len(runs) * fleet.ORGS * 2 and stats.duplicates == 0
    assert stats.rate_limited == 0  # never above the one configured rate
