"""The worker, the job lifecycle and the test kit, on the embedded store, in one process."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest

import oncely
from oncely.testing import assert_enqueued, run_job, wait_until, worker_running
from oncely.types import ErrorKind, JobState


@pytest.fixture
def app(tmp_path):
    settings = oncely.Settings(poll_interval=0.05, shutdown_grace=0.5, lease_ttl=30)
    application = oncely.App(f"sqlite:///{tmp_path / 'jobs.db'}", settings=settings)
    yield application
    application.close()


def finished(app, handle):
    job = handle.refresh()
    return job if job.state.finished else None


def test_a_job_runs_once_and_keeps_its_result(app):
    calls = []

    @app.task(name="add")
    def add(ctx, a, b):
        calls.append(ctx.job_id)
        return {"sum": a + b}

    handle = add.enqueue(a=2, b=3)
    with worker_running(app):
        job = wait_until(lambda: finished(app, handle), message="job finished")
    assert job.state == JobState.SUCCEEDED
    assert job.result == {"sum": 5}
    assert calls == [handle.id]
    assert job.attempt == 1 and job.finished_at is not None


def test_failures_retry_per_policy_and_keep_each_traceback(app):
    @app.task(name="flaky", retry=oncely.RetryPolicy(attempts=3, backoff="fixed", base_delay=0))
    def flaky(ctx):
        if ctx.attempt < 3:
            raise RuntimeError(f"boom {ctx.attempt}")
        return "ok"

    handle = flaky.enqueue()
    with worker_running(app):
        job = wait_until(lambda: finished(app, handle), message="flaky finished")
    assert job.state == JobState.SUCCEEDED and job.attempt == 3
    assert [e.message for e in job.errors] == ["RuntimeError: boom 1", "RuntimeError: boom 2"]
    assert all("Traceback" in (e.traceback or "") for e in job.errors)


def test_a_fenced_write_and_its_checkpoint_commit_together_or_not_at_all(app):
    with app.store.transaction() as conn:
        conn.execute("CREATE TABLE steps (step INTEGER NOT NULL)")
    seen = []

    @app.task(name="stepwise", retry=oncely.RetryPolicy(attempts=3, backoff="fixed", base_delay=0))
    def stepwise(ctx):
        seen.append(ctx.last_checkpoint)
        if ctx.attempt == 1:
            with ctx.fenced(checkpoint={"step": 1}) as conn:
                conn.execute("INSERT INTO steps VALUES (1)")
                raise RuntimeError("rolled back, and its checkpoint with it")
        if ctx.attempt == 2:
            with pytest.raises(oncely.ArgsNotJSON), ctx.fenced(checkpoint={"step": {2}}):
                pass  # refused before the transaction begins
            with ctx.fenced(checkpoint={"step": 2}) as conn:
                conn.execute("INSERT INTO steps VALUES (2)")
            seen.append(ctx.last_checkpoint)
            raise RuntimeError("after the commit")
        return "done"

    handle = stepwise.enqueue()
    with worker_running(app):
        job = wait_until(lambda: finished(app, handle), message="stepwise finished")
    assert job.state == JobState.SUCCEEDED and job.attempt == 3
    assert seen == [None, None, {"step": 2}, {"step": 2}]
    with app.store.transaction() as conn:
        assert [tuple(row) for row in conn.execute("SELECT step FROM steps")] == [(2,)]


def test_a_job_out_of_attempts_fails(app):
    @app.task(name="broken", retry=oncely.RetryPolicy(attempts=2, backoff="fixed", base_delay=0))
    def broken(ctx):
        raise ValueError("always")

    handle = broken.enqueue()
    with worker_running(app):
        job = wait_until(lambda: finished(app, handle), message="broken finished")
    assert job.state == JobState.FAILED and job.attempt == 2
    assert len(job.errors) == 2


def test_async_handlers_run(app):
    @app.task(name="coro")
    async def coro(ctx, n):
        await asyncio.sleep(0)
        return n * 2

    handle = coro.enqueue(n=21)
    with worker_running(app):
        job = wait_until(lambda: finished(app, handle))
    assert job.result == 42


def test_priorities_run_high_first(app):
    order = []

    @app.task(name="mark")
    def mark(ctx, label):
        order.append(label)

    for label, priority in [("low", 0), ("high", 10), ("mid", 5)]:
        mark.enqueue(label=label, priority=priority)
    with worker_running(app, concurrency=1):
        wait_until(lambda: len(order) == 3)
    assert order == ["high", "mid", "low"]


def test_run_at_is_honoured_under_a_frozen_clock(tmp_path):
    clock = oncely.FrozenClock("2026-05-01T12:00:00+00:00")
    settings = oncely.Settings(poll_interval=0.05)
    app = oncely.App(f"sqlite:///{tmp_path / 'f.db'}", clock=clock, settings=settings)
    ran = threading.Event()

    @app.task(name="later")
    def later(ctx):
        ran.set()

    handle = later.enqueue(delay=timedelta(minutes=10))
    assert handle.state == JobState.SCHEDULED
    with worker_running(app, maintenance=False):
        assert not ran.wait(0.3)
        clock.advance(timedelta(minutes=10))
        assert ran.wait(5)
    app.close()


def test_retry_request_and_cancel_signals(app):
    @app.task(name="again", retry=oncely.RetryPolicy(attempts=5))
    def again(ctx):
        raise oncely.Retry(delay=3600, reason="not yet")

    @app.task(name="stop")
    def stop(ctx):
        raise oncely.Cancel("nothing to do")

    retry_result = run_job(again)
    assert retry_result.state == JobState.RETRYABLE
    assert retry_result.job.errors[-1].kind == ErrorKind.RETRY
    assert (retry_result.job.run_at - retry_result.job.errors[-1].at) == timedelta(seconds=3600)
    cancel_result = run_job(stop)
    assert cancel_result.state == JobState.CANCELLED
    assert cancel_result.job.errors[-1].message == "nothing to do"


def test_timeout_stops_a_cooperative_handler_and_counts_as_failure(app):
    @app.task(name="forever", timeout=0.2)
    def forever(ctx):
        while True:
            ctx.raise_if_cancelled()
            time.sleep(0.01)

    handle = forever.enqueue()
    with worker_running(app):
        job = wait_until(lambda: finished(app, handle))
    assert job.state == JobState.FAILED
    assert job.errors[-1].kind == ErrorKind.TIMEOUT


def test_a_handler_that_ignores_its_timeout_keeps_its_job_until_it_stops(app):
    """The stuck thread is written off (the worker goes on with other jobs), but its job stays
    running — lease renewed, singleton key held — until the code really returns; only then is
    the timeout recorded."""
    release = threading.Event()
    events: list[str] = []
    app.events.subscribe(lambda event: events.append(event.name))

    @app.task(name="stuck", timeout=0.1)
    def stuck(ctx):
        release.wait(30)

    @app.task(name="after")
    def after(ctx):
        return "ran"

    handle = stuck.enqueue()
    with worker_running(app, concurrency=1):
        wait_until(lambda: "job.overrunning" in events, timeout=15)
        # The stuck thread was written off: the worker still runs other jobs.
        second = after.enqueue()
        assert wait_until(lambda: finished(app, second)).result == "ran"
        assert handle.refresh().state == JobState.RUNNING, "the job left the worker's hands"
        release.set()
        job = wait_until(lambda: finished(app, handle), timeout=15)
    assert job.state == JobState.FAILED and job.errors[-1].kind == ErrorKind.TIMEOUT
    assert "ignored the request to stop" in job.errors[-1].message
    assert "job.overrun_ended" in events


def test_cancelling_a_running_job_stops_it_cooperatively(app):
    started = threading.Event()

    @app.task(name="long")
    def long(ctx):
        started.set()
        while True:
            ctx.raise_if_cancelled()
            time.sleep(0.01)

    handle = long.enqueue()
    app.settings = app.settings.with_(lease_ttl=3)
    with worker_running(app):
        assert started.wait(5)
        app.store.job_cancel(handle.id, app.clock.now(), "operator said so")
        job = wait_until(lambda: finished(app, handle), timeout=10)
    assert job.state == JobState.CANCELLED


def test_cancelling_a_waiting_job_is_immediate(app):
    @app.task(name="never")
    def never(ctx):
        raise AssertionError("must not run")

    handle = never.enqueue(delay=60)
    job = app.store.job_cancel(handle.id, app.clock.now(), "not needed")
    assert job.state == JobState.CANCELLED
    with worker_running(app):
        time.sleep(0.2)
    assert handle.refresh().state == JobState.CANCELLED


def test_unique_key_dedups_while_unfinished(app):
    @app.task(name="once")
    def once(ctx):
        return None

    first = once.enqueue(unique_key="k")
    second = once.enqueue(unique_key="k")
    assert first.created and not second.created and first.id == second.id
    assert run_job(once).state == JobState.SUCCEEDED  # another job, unrelated key
    app.store.job_cancel(first.id, app.clock.now(), "done with it")
    third = once.enqueue(unique_key="k")
    assert third.created and third.id != first.id


def test_bad_arguments_are_refused_before_anything_is_stored(app):
    @app.task(name="takes")
    def takes(ctx, value):
        return None

    with pytest.raises(oncely.ArgsNotJSON, match="JSON"):
        takes.enqueue(value=object())
    with pytest.raises(oncely.UnknownTask, match="unknown task 'nope'"):
        app.enqueue("nope")
    assert app.store.job_list(oncely.store.base.JobFilter()) == []


def test_args_that_do_not_fit_the_handler_are_refused_at_enqueue(app):
    @app.task(name="bill", concurrency_key="org:{org_id}")
    def bill(ctx, org_id, cycle="current", *, dry_run=False):
        return None

    @app.task(name="anything")
    def anything(ctx, org_id, **extra):
        return None

    refusals = [
        (lambda: bill.enqueue(org_id=1, org=2), "the handler takes no argument 'org'"),
        (lambda: bill.enqueue(cycle="2026-12"), "'org_id' missing"),
        (lambda: app.enqueue_job("bill", {"org_id": 1, "dryrun": True, "x": 0}),
         "takes no argument 'dryrun', 'x' (the handler takes cycle, dry_run, org_id)"),
        (lambda: app.enqueue_many("bill", [{"org_id": 1}, {"org_id": 2, "typo": 1}]),
         "takes no argument 'typo'"),  # the whole call: nothing of it is stored
        (lambda: app.enqueue("anything", extra=1), "'org_id' missing"),
        (lambda: app.schedule("nightly", "bill", every=60, args={"orgid": 1}), "'orgid'"),
    ]
    for call, fragment in refusals:
        with pytest.raises(oncely.ArgsMismatch) as refused:
            call()
        assert fragment in str(refused.value) and "\n" not in str(refused.value)
        assert isinstance(refused.value, oncely.ConfigError)  # exit code 2 on the command line
    assert app.store.job_list(oncely.store.base.JobFilter()) == []
    assert "nightly" not in app.schedules
    assert bill.enqueue(org_id=1, dry_run=True).created  # defaults may be left out
    assert anything.enqueue(org_id=1, region="eu", tier=2).created  # **extra takes the rest


def test_a_handler_that_cannot_take_the_context_first_is_refused_at_definition(app):
    with pytest.raises(oncely.ConfigError, match="must take the job's context as its first"):
        @app.task(name="bare")
        def bare():
            return None
    with pytest.raises(oncely.ConfigError, match="must take the job's context as its first"):
        @app.task(name="named_only")
        def named_only(*, ctx):
            return None
    with pytest.raises(oncely.ConfigError, match="'org_id' is positional-only"):
        @app.task(name="positional")
        def positional(ctx, org_id, /):
            return None
    assert {"bare", "named_only", "positional"}.isdisjoint(app.tasks)


def test_a_stored_job_whose_args_no_longer_fit_fails_at_once_without_its_handler(app):
    """A job stored when the handler took other args (an earlier release's): the worker fails
    it for good, naming the mismatch; retrying could only fail the same way."""
    calls = []

    @app.task(name="renamed", retry=oncely.RetryPolicy(attempts=5, base_delay=0))
    def renamed(ctx, org_id):
        calls.append(org_id)

    old = app.enqueue_job("renamed", {"org_id": 1})
    # the same task's next release takes `organization` instead of `org_id`
    del app.tasks["renamed"]

    @app.task(name="renamed", retry=oncely.RetryPolicy(attempts=5, base_delay=0))
    def renamed_again(ctx, organization):
        calls.append(organization)

    listed = renamed_again.enqueue(organization=3)
    with app.transaction() as tx:  # args that are no JSON object, written past every check
        tx.execute("UPDATE oncely_jobs SET args = '[3]' WHERE id = %s", (listed.id,))
    new = renamed_again.enqueue(organization=2)
    with worker_running(app):
        failed = wait_until(lambda: finished(app, old), message="the old job finished")
        not_object = wait_until(lambda: finished(app, listed), message="the list job finished")
        ran = wait_until(lambda: finished(app, new), message="the new job finished")
    assert failed.state == JobState.FAILED and failed.attempt == 1  # no retry
    assert failed.errors[-1].message == (
        "args do not fit the handler: the handler takes no argument 'org_id'; argument "
        "'organization' missing (the handler takes organization)")
    assert not_object.state == JobState.FAILED and not_object.attempt == 1
    assert not_object.errors[-1].message == (
        "args do not fit the handler: args must be a JSON object, not list")
    assert ran.state == JobState.SUCCEEDED and calls == [2]


def test_graceful_shutdown_releases_what_does_not_finish(app):
    started = threading.Event()

    @app.task(name="sleeper")
    def sleeper(ctx):
        started.set()
        time.sleep(5)  # ignores cancellation on purpose

    handle = sleeper.enqueue()
    with worker_running(app):
        assert started.wait(5)
    job = handle.refresh()
    assert job.state == JobState.RETRYABLE
    assert job.attempt == 0  # the attempt was refunded
    assert job.errors[-1].kind == ErrorKind.SHUTDOWN
    assert job.lease_owner is None


def test_test_kit_assert_enqueued(app):
    @app.task(name="emails")
    def emails(ctx, to):
        return None

    emails.enqueue(to="a@example.com")
    emails.enqueue(to="b@example.com")
    assert len(assert_enqueued(app, "emails", count=2)) == 2
    assert assert_enqueued(app, emails, {"to": "b@example.com"})[0].args == {"to": "b@example.com"}
    with pytest.raises(AssertionError, match="expected at least one"):
        assert_enqueued(app, "emails", {"to": "c@example.com"})


def test_outcome_events_name_the_schedule_and_slot_of_a_slots_job(app):
    @app.task(name="tick")
    def tick(ctx):
        return ctx.slot.isoformat() if ctx.slot else None

    app.schedule("every-minute", "tick", cron="* * * * *")
    seen: list[oncely.observe.events.Event] = []
    app.events.subscribe(seen.append)
    handle = app.trigger("every-minute")
    assert handle is not None
    plain = tick.enqueue()  # shares the schedule's key: it runs after the slot's job
    with worker_running(app):
        job = wait_until(lambda: finished(app, handle), message="slot job finished")
        wait_until(lambda: finished(app, plain), message="plain job finished")
    done = {e.fields["job_id"]: e.fields for e in seen if e.name == "job.succeeded"}
    assert done[handle.id]["schedule"] == "every-minute"
    assert done[handle.id]["slot"] == job.slot.isoformat() == job.result
    assert "schedule" not in done[plain.id] and "slot" not in done[plain.id]
