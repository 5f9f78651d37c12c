"""A paused queue's hourly backlog, enqueued on time by the engine's own slot enqueuer and judged
by the schedule's policies when the queue resumes (frozen clock), on every store; and a job of a
task no live worker has, named by the job view and ``oncely doctor``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import oncely
from oncely.maintenance.enqueuer import SlotEnqueuer, register_schedules
from oncely.observe.doctor import examine
from oncely.readmodel import job_detail
from oncely.store.params import JobClaimParams, JobInsert, WorkerInfo
from oncely.types import JobState, SlotOutcome

START = datetime(2026, 11, 30, 10, 0, 30, tzinfo=UTC)


def hourly_app(url: str, clock: oncely.FrozenClock, **policies: str) -> oncely.App:
    app = oncely.App(url, clock=clock)

    @app.task(name="report", queue="reports")
    def report(ctx: oncely.JobContext) -> None:
        return None

    app.schedule("hourly", "report", cron="0 * * * *", **policies)
    return app


def backlog_then_resume(app: oncely.App, clock: oncely.FrozenClock, hours: int = 6):
    register_schedules(app)
    app.pause_queue("reports")
    for _ in range(hours):
        clock.advance(timedelta(hours=1))
        SlotEnqueuer(app.runtime).run_once()
    app.resume_queue("reports")
    result = app.store.job_claim(JobClaimParams("w1", clock.now(), 10, 30.0, None, ("report",)))
    ledger = {r.slot: r for r in app.store.ledger_list("hourly", limit=100)}
    return result, [ledger[slot] for slot in sorted(ledger)]


@pytest.mark.parametrize("overlap", ["skip", "allow"])
def test_latest_runs_the_newest_slot_of_the_backlog_once(any_url, overlap) -> None:
    clock = oncely.FrozenClock(START)
    app = hourly_app(any_url, clock, catch_up="latest", overlap=overlap)
    result, ledger = backlog_then_resume(app, clock)
    assert [job.slot for job in result.jobs] == [ledger[-1].slot]
    assert [r.outcome for r in ledger] == [SlotOutcome.COALESCED] * 5 + [SlotOutcome.ENQUEUED]
    assert all("at claim" in (r.note or "") for r in ledger[:-1])


def test_none_records_the_stale_backlog_missed(any_url) -> None:
    clock = oncely.FrozenClock(START)
    app = hourly_app(any_url, clock, catch_up="none")
    result, ledger = backlog_then_resume(app, clock)
    # the newest slot is 30 s old when the queue resumes: within its grace, it runs on time
    assert [job.slot for job in result.jobs] == [ledger[-1].slot]
    assert [r.outcome for r in ledger] == [SlotOutcome.MISSED] * 5 + [SlotOutcome.ENQUEUED]
    assert all("misfire grace" in (r.note or "") for r in ledger[:-1])


def test_buffer_one_runs_one_and_buffers_one(any_url) -> None:
    clock = oncely.FrozenClock(START)
    app = hourly_app(any_url, clock, catch_up="all", overlap="buffer_one")
    result, ledger = backlog_then_resume(app, clock)
    assert [job.slot for job in result.jobs] == [ledger[0].slot]
    assert [r.outcome for r in ledger[2:]] == [SlotOutcome.SKIPPED_OVERLAP] * 4
    assert app.store.job_get(ledger[1].job_id or 0).state == JobState.AVAILABLE


def test_a_job_whose_task_no_live_worker_has_waits_and_is_named(any_url) -> None:
    clock = oncely.FrozenClock(START)
    app = oncely.App(any_url, clock=clock)
    job = app.store.job_insert(JobInsert(task="exotic", queue="rare"), clock.now()).job
    app.store.worker_register(WorkerInfo("w-old", "host", 1, None, 4, clock.now(), ("common",)))
    claim = JobClaimParams("w-old", clock.now(), 10, 30.0, None, ("common",))
    assert app.store.job_claim(claim).jobs == []
    detail = job_detail(app.store, job.id, clock.now())
    assert detail["waiting_reason"] == "no live worker has task 'exotic' for queue 'rare'"
    findings = [f for f in examine(app.runtime).findings if f.check == "tasks"]
    assert len(findings) == 1 and "'exotic'" in findings[0].summary
    assert "'rare'" in findings[0].summary
    app.store.worker_register(WorkerInfo("w-new", "host", 2, ("rare",), 4, clock.now(),
                                         ("common", "exotic")))
    assert [f for f in examine(app.runtime).findings if f.check == "tasks"] == []
    claim = JobClaimParams("w-new", clock.now(), 10, 30.0, ("rare",), ("common", "exotic"))
    assert [claimed.id for claimed in app.store.job_claim(claim).jobs] == [job.id]
