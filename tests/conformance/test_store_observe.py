"""Conformance: the observability section — executions recorded by the database, ledger and queue
counts, fleet events (lease takeovers, fence rejections), anomalies and their retention."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from oncely.store.observability import (
    FENCE_REJECTED,
    LEASE_TAKEN_OVER,
    AnomalyKind,
    AnomalyRaise,
    ExecutionWindow,
    FleetEventInsert,
)
from oncely.store.params import PruneParams, SlotEnqueue
from oncely.types import ErrorKind, JobState, SlotOutcome

if TYPE_CHECKING:
    from conftest import Kit


def window(kit: Kit, back: float = 3600, ahead: float = 3600, **fields: object) -> ExecutionWindow:
    return ExecutionWindow(kit.later(-back), kit.later(ahead), **fields)  # type: ignore[arg-type]


# executions ------------------------------------------------------------------------------------


def test_every_started_attempt_is_recorded_with_its_end(kit: Kit) -> None:
    job = kit.insert("report", queue="q", max_attempts=3)
    first = kit.claim_one("w1")
    kit.clock.advance(2)
    error = kit.error(first)
    assert kit.finish(first, JobState.RETRYABLE, error=error, retry_at=kit.now())
    kit.clock.advance(1)
    second = kit.claim_one("w2")
    kit.clock.advance(5)
    assert kit.finish(second)

    runs = kit.store.execution_list(job_id=job.id)
    assert [(r.attempt, r.worker_id, r.outcome, r.error_kind) for r in runs] == [
        (2, "w2", "succeeded", None),
        (1, "w1", "retryable", "error"),
    ]
    assert runs[0].fence == second.fence and runs[1].fence == first.fence
    assert (runs[0].ended_at - runs[0].started_at).total_seconds() == pytest.approx(5, abs=0.01)
    assert (runs[1].ended_at - runs[1].started_at).total_seconds() == pytest.approx(2, abs=0.01)
    assert runs[0].task == "report" and runs[0].queue == "q" and runs[0].schedule is None
    assert kit.store.execution_durations("report") == [pytest.approx(5, abs=0.01)]


def test_attempts_outlive_their_job_and_a_human_retry_keeps_the_finished_one(kit: Kit) -> None:
    failed = kit.insert("report", max_attempts=1)
    first = kit.claim_one("w1")
    kit.clock.advance(2)
    assert kit.finish(first, JobState.FAILED, error=kit.error(first))
    kit.store.job_retry(failed.id, kit.now())  # a human's retry: one more attempt
    second = kit.claim_one("w2")
    kit.clock.advance(3)
    assert kit.finish(second)
    done = kit.insert("report")
    third = kit.claim_one("w3")
    assert kit.finish(third)

    def runs() -> list[tuple[object, ...]]:
        return [(r.id, r.job_id, r.attempt, r.fence, r.worker_id, r.outcome, r.error_kind,
                 r.started_at, r.ended_at) for r in kit.store.execution_list(task="report")]

    before = runs()
    assert [(job_id, attempt, worker, outcome, kind)
            for _, job_id, attempt, _, worker, outcome, kind, *_ in before] == [
        (done.id, 1, "w3", "succeeded", None),
        (failed.id, 2, "w2", "succeeded", None),
        (failed.id, 1, "w1", "failed", "error"),
    ]
    assert len({row[0] for row in before}) == 3  # each attempt has an id of its own
    kit.clock.advance(60)
    assert kit.store.job_prune(PruneParams(JobState.SUCCEEDED, finished_before=kit.now())) == 2
    assert kit.store.job_get(done.id) is None and kit.store.job_get(failed.id) is None
    assert runs() == before  # the history of a pruned job stays (the observations' retention)


def test_a_running_attempt_has_no_end_and_a_release_is_marked(kit: Kit) -> None:
    kit.insert("t")
    job = kit.claim_one()
    [running] = kit.store.execution_list(task="t")
    assert running.ended_at is None and running.outcome is None
    kit.clock.advance(1)
    error = kit.error(job, ErrorKind.SHUTDOWN, "released")
    assert kit.finish(job, JobState.RETRYABLE, error=error, retry_at=kit.now(),
                      refund_attempt=True)
    [released] = kit.store.execution_list(task="t")
    assert released.outcome == "released" and released.error_kind == "shutdown"
    assert released.ended_at is not None


def test_a_rescue_ends_the_attempt_with_lease_expired(kit: Kit) -> None:
    kit.insert("t", max_attempts=2)
    job = kit.claim_one(ttl=10)
    kit.clock.advance(11)
    from oncely.store.params import JobFinish

    rescued = kit.store.job_finish(JobFinish(
        job.id, job.fence, kit.now(), JobState.RETRYABLE, retry_at=kit.now(),
        error=kit.error(job, ErrorKind.LEASE_EXPIRED, "lease expired"), require_expired_lease=True,
    ))
    assert rescued
    [run] = kit.store.execution_list(job_id=job.id)
    assert (run.outcome, run.error_kind) == ("retryable", "lease_expired")


def test_execution_counts_split_slots_retries_and_buckets(kit: Kit) -> None:
    start = kit.now()
    for index in range(3):  # three plain runs of the task, 10 minutes apart
        kit.insert("hourly-task")
        kit.finish(kit.claim_one(f"w{index}"))
        kit.clock.advance(600)
    kit.slot("hourly", kit.now())  # one slot run, failing once then succeeding
    slot_job = kit.claim_one("w9")
    kit.finish(slot_job, JobState.RETRYABLE, error=kit.error(slot_job), retry_at=kit.now())
    kit.clock.advance(1)
    kit.finish(kit.claim_one("w9"))

    rows = kit.store.execution_counts(ExecutionWindow(start - timedelta(seconds=1), kit.now()))
    by_schedule = {row.schedule: row for row in rows}
    plain, slotted = by_schedule[None], by_schedule["hourly"]
    assert (plain.executions, plain.retries, plain.jobs, plain.workers) == (3, 0, 3, 3)
    assert (slotted.executions, slotted.retries, slotted.jobs, slotted.workers) == (2, 1, 1, 1)
    assert slotted.failures == 1 and plain.failures == 0

    buckets = kit.store.execution_counts(
        ExecutionWindow(start - timedelta(seconds=1), kit.now(), task="hourly-task",
                        bucket_seconds=600)
    )
    # kit.slot's jobs run the same task as the plain ones: "hourly-task"
    assert [(row.schedule, row.bucket, row.executions) for row in buckets] == [
        (None, 0, 1), (None, 1, 1), (None, 2, 1), ("hourly", 3, 2)]
    none = kit.store.execution_counts(ExecutionWindow(kit.now(), kit.later(60)))
    assert none == []


def test_execution_counts_total_the_wait(kit: Kit) -> None:
    kit.insert("t")
    kit.clock.advance(30)
    kit.finish(kit.claim_one())
    [row] = kit.store.execution_counts(window(kit))
    assert row.wait_seconds == pytest.approx(30, abs=0.01)


def test_overlaps_count_attempts_started_while_another_ran(kit: Kit) -> None:
    kit.insert("t")
    kit.insert("t")
    first, second = kit.claim(limit=2).jobs
    kit.clock.advance(5)
    kit.finish(first)
    kit.finish(second)
    kit.insert("t")
    kit.finish(kit.claim_one())  # after both ended: no overlap
    assert kit.store.execution_overlaps("t", kit.later(-60), kit.now()) == 1
    assert kit.store.execution_overlaps("other", kit.later(-60), kit.now()) == 0


# ledger and queues -----------------------------------------------------------------------------


def test_ledger_counts_group_outcomes_per_schedule(kit: Kit) -> None:
    base = kit.now()
    for minutes in (1, 2, 3):
        kit.store.slot_enqueue(SlotEnqueue("s", base + timedelta(minutes=minutes), kit.now(),
                                           outcome=SlotOutcome.MISSED))
    kit.slot("s", base + timedelta(minutes=4))
    kit.slot("other", base + timedelta(minutes=4))
    rows = kit.store.ledger_counts(base, base + timedelta(minutes=10), schedule="s")
    assert [(r.outcome, r.count) for r in rows] == [("enqueued", 1), ("missed", 3)]
    assert rows[1].first_slot == base + timedelta(minutes=1)
    assert rows[1].last_slot == base + timedelta(minutes=3)
    every = kit.store.ledger_counts(base, base + timedelta(minutes=10))
    assert {r.schedule for r in every} == {"s", "other"}
    assert kit.store.ledger_counts(base + timedelta(minutes=4), base + timedelta(hours=1)) == []


def test_job_waiting_groups_due_jobs_with_their_oldest(kit: Kit) -> None:
    kit.insert("a", queue="q1")
    kit.clock.advance(10)
    kit.insert("a", queue="q1")
    kit.insert("b", queue="q2", run_at=kit.later(3600))  # not due yet
    groups = kit.store.job_waiting(kit.now())
    assert [(g.queue, g.task, g.count) for g in groups] == [("q1", "a", 2)]
    assert groups[0].oldest_run_at == kit.later(-10)


# fleet events ----------------------------------------------------------------------------------


def test_a_grant_over_an_expired_holder_is_a_lease_takeover(kit: Kit) -> None:
    kit.insert("t", singleton_key="k")
    kit.insert("t", singleton_key="k")
    kit.claim_one("w1", ttl=10)
    assert kit.claim("w2").jobs == []
    kit.clock.advance(11)  # w1 stalls past its lease
    taker = kit.claim_one("w2")
    counts = kit.store.event_counts(kit.later(-60))
    assert counts == {LEASE_TAKEN_OVER: 1}
    [event] = kit.store.event_list(LEASE_TAKEN_OVER)
    assert (event.job_id, event.task, event.subject) == (taker.id, "t", "k")
    assert event.detail["previous_owner"] == "w1" and event.detail["owner"] == "w2"
    assert event.at == kit.now()


def test_an_orderly_handover_is_no_takeover(kit: Kit) -> None:
    for _ in range(2):
        kit.insert("t", singleton_key="k")
        kit.finish(kit.claim_one())
    assert kit.store.event_counts(kit.later(-60)) == {}


def test_recorded_events_are_counted_and_listed(kit: Kit) -> None:
    for job_id in (1, 2):
        kit.store.event_record(FleetEventInsert(FENCE_REJECTED, kit.now(), job_id=job_id,
                                                task="t", detail={"fence": 3}))
        kit.clock.advance(1)
    assert kit.store.event_counts(kit.later(-60)) == {FENCE_REJECTED: 2}
    assert kit.store.event_counts(kit.now()) == {}
    events = kit.store.event_list()
    assert [e.job_id for e in events] == [2, 1] and events[0].detail == {"fence": 3}


# anomalies -------------------------------------------------------------------------------------


def raise_anomaly(kit: Kit, summary: str = "31.0x expected", **fields: object):
    params = AnomalyRaise(AnomalyKind.TOO_MANY, "schedule:s", summary, kit.now(), schedule="s",
                          ratio=31.0, evidence={"observed": 31, "expected": 1}, **fields)  # type: ignore[arg-type]
    return kit.store.anomaly_raise(params)


def test_an_anomaly_is_raised_once_and_updated_while_open(kit: Kit) -> None:
    first = raise_anomaly(kit)
    assert first.created and first.anomaly.open and first.anomaly.occurrences == 1
    kit.clock.advance(60)
    again = raise_anomaly(kit, summary="32.0x expected", advice="use app.trigger")
    assert not again.created and again.anomaly.id == first.anomaly.id
    assert again.anomaly.occurrences == 2 and again.anomaly.summary == "32.0x expected"
    assert again.anomaly.first_seen_at == first.anomaly.first_seen_at
    assert again.anomaly.last_seen_at == kit.now()
    assert again.anomaly.evidence == {"observed": 31, "expected": 1}
    assert again.anomaly.advice == "use app.trigger"
    assert kit.store.anomaly_get(first.anomaly.id) == again.anomaly


def test_a_resolved_anomaly_reopens_as_a_new_one(kit: Kit) -> None:
    first = raise_anomaly(kit).anomaly
    assert kit.store.anomaly_resolve(first.id, kit.now())
    assert not kit.store.anomaly_resolve(first.id, kit.now())
    assert kit.store.anomaly_list() == []
    kit.clock.advance(1)
    second = raise_anomaly(kit)
    assert second.created and second.anomaly.id != first.id
    assert [a.id for a in kit.store.anomaly_list()] == [second.anomaly.id]
    assert [a.id for a in kit.store.anomaly_list(open_only=False)] == [second.anomaly.id, first.id]
    assert kit.store.anomaly_get(first.id).resolved_at is not None
    assert kit.store.anomaly_get(999999) is None


def test_observation_prune_keeps_recent_and_running_rows(kit: Kit) -> None:
    kit.insert("t")
    kit.finish(kit.claim_one())
    kit.insert("t")
    kit.claim_one()  # still running: kept whatever its age
    kit.store.event_record(FleetEventInsert(FENCE_REJECTED, kit.now()))
    old = raise_anomaly(kit).anomaly
    kit.store.anomaly_resolve(old.id, kit.now())
    kit.clock.advance(3600)
    kit.insert("t")
    kit.finish(kit.claim_one())
    pruned = kit.store.observation_prune(kit.later(-60))
    outcomes = [r.outcome for r in kit.store.execution_list(task="t")]
    if kit.store.dialect == "sqlite":
        assert (pruned, outcomes) == (3, ["succeeded", None])
    else:
        # PostgreSQL records a job's latest attempt on the job's row: it stays as long as the
        # job (job retention), and moves into the observations when the job is pruned.
        assert (pruned, outcomes) == (2, ["succeeded", None, "succeeded"])
    assert kit.store.event_list() == [] and kit.store.anomaly_list(open_only=False) == []
