"""Conformance: every transition of :data:`oncely.lifecycle.TRANSITIONS`, and every human action
the table refuses, applied to a real store. A job of a schedule slot is used throughout, so each
step also checks what the slot ledger records. The finishes a worker records take their state and
attempt refund from the table (:data:`~oncely.lifecycle.FINISH_STATE`,
:data:`~oncely.lifecycle.REFUNDS_ATTEMPT`), a rescue its outcome, error and ledger note."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from oncely import lifecycle
from oncely.errors import ConfigError
from oncely.lifecycle import CancelAction, JobEvent, RetryAction
from oncely.store.params import JobFinish
from oncely.store.rescue import JobRescue
from oncely.types import ErrorKind, Job, JobError, JobState, SlotOutcome

if TYPE_CHECKING:
    from conftest import Kit

S = JobState
SCHEDULE = "walk"
_SLOTS = itertools.count()


def _slot_job(kit: Kit, run_in: float = 0.0, key: str | None = None, **fields: object) -> Job:
    # Each job its own slot, earlier than the last one's, so it is the next one claimed.
    slot = kit.later(run_in) - timedelta(seconds=next(_SLOTS))
    result = kit.slot(SCHEDULE, slot, key=key, max_attempts=3, **fields)
    assert result.job_id is not None
    return kit.get(result.job_id)


def _running(kit: Kit) -> Job:
    _slot_job(kit)
    return kit.claim_one()


def _error(kit: Kit, job: Job) -> JobError:
    return JobError(job.attempt, kit.now(), ErrorKind.ERROR, "boom")


def job_in(kit: Kit, state: JobState) -> Job:
    """A fresh slot job in ``state``, made through the store's own operations."""
    if state == S.SCHEDULED:
        return _slot_job(kit, run_in=60)
    if state == S.AVAILABLE:
        return _slot_job(kit)
    job = _running(kit)
    if state == S.RUNNING:
        return job
    fields: dict[str, object] = {}
    if state == S.RETRYABLE:
        fields = {"error": _error(kit, job), "retry_at": kit.now()}
    elif state in (S.FAILED, S.CANCELLED):
        fields = {"error": _error(kit, job)}
    assert kit.finish(job, state, **fields)
    return kit.get(job.id)


def outcome(kit: Kit, job: Job) -> SlotOutcome:
    assert job.slot is not None
    records = {r.slot: r for r in kit.store.ledger_list(SCHEDULE, limit=100)}
    return records[job.slot].outcome


def _finish(kit: Kit, job: Job, state: JobState, **fields: object) -> Job:
    assert kit.finish(job, state, **fields)
    return kit.get(job.id)


def apply(kit: Kit, event: JobEvent, job: Job) -> Job:
    """Apply ``event`` to ``job`` through the store; the job as it is afterwards."""
    if event == JobEvent.CLAIM:
        kit.clock.advance(120)  # due, whatever its run_at
        claimed = kit.claim(limit=10).jobs
        assert [j.id for j in claimed] == [job.id]
        return claimed[0]
    if event in lifecycle.FINISH_STATE:  # what a worker records: a fenced finish
        target = lifecycle.FINISH_STATE[event]
        refund = event in lifecycle.REFUNDS_ATTEMPT
        error = None if target == S.SUCCEEDED else _error(kit, job)
        retry_at = kit.later(5) if target == S.RETRYABLE else None
        after = _finish(kit, job, target, error=error, retry_at=retry_at, refund_attempt=refund)
        assert after.attempt == job.attempt - refund
        return after
    if event == JobEvent.RESCUE:
        kit.clock.advance(kit.ttl + 1)
        assert [j.id for j in kit.store.job_expired(kit.now(), 10)] == [job.id]
        assert kit.store.job_rescue(JobRescue(job.id, job.fence, kit.now(), "silent"))
        return kit.get(job.id)
    if event in (JobEvent.CANCEL_WAITING, JobEvent.REQUEST_CANCEL):
        return kit.store.job_cancel(job.id, kit.now(), "by hand")
    assert event == JobEvent.RETRY_BY_HAND
    return kit.store.job_retry(job.id, kit.now())


def _ledger_after(kit: Kit, after: Job) -> None:
    # A job that has not ended (again) leaves its slot enqueued.
    expected = lifecycle.slot_outcome(after.state) or SlotOutcome.ENQUEUED
    assert outcome(kit, after) == expected


WALKED = sorted(
    ((state, event) for state, event in lifecycle.TRANSITIONS if event != JobEvent.SKIP_OVERLAP),
    key=str,
)


@pytest.mark.parametrize(("state", "event"), WALKED, ids=[f"{s}-{e}" for s, e in WALKED])
def test_transition(kit: Kit, state: JobState, event: JobEvent) -> None:
    job = job_in(kit, state)
    assert job.state == state
    after = apply(kit, event, job)
    assert after.state in lifecycle.TRANSITIONS[(state, event)]
    _ledger_after(kit, after)
    if event == JobEvent.REQUEST_CANCEL:
        assert after.cancel_requested


@pytest.mark.parametrize("max_rescues", [0, 1, 3])
def test_rescue_follows_the_table(kit: Kit, max_rescues: int) -> None:
    """A rescue retries (attempt given back) or fails the job as the table says, frees the key's
    lease and notes the slot's ledger row."""
    _slot_job(kit, key="k")
    job = kit.claim_one()
    kit.clock.advance(kit.ttl + 1)
    reason = "lease expired"
    rescued = kit.store.job_rescue(JobRescue(job.id, job.fence, kit.now(), reason, max_rescues))
    assert rescued is not None and rescued.rescues == 1
    assert rescued.state == lifecycle.rescue_state(1, max_rescues)
    assert rescued.state in lifecycle.TRANSITIONS[(S.RUNNING, JobEvent.RESCUE)]
    after = kit.get(job.id)
    assert after.state == rescued.state and after.lease_owner is None
    refund = JobEvent.RESCUE in lifecycle.REFUNDS_ATTEMPT and rescued.state == S.RETRYABLE
    assert after.attempt == job.attempt - refund
    assert after.errors[-1].kind == ErrorKind.LEASE_EXPIRED
    assert after.errors[-1].message == lifecycle.rescue_message(1, max_rescues, reason)
    _ledger_after(kit, after)
    (record,) = [r for r in kit.store.ledger_list(SCHEDULE, limit=100) if r.slot == job.slot]
    assert record.note == lifecycle.rescue_note(1, max_rescues, reason)
    (lease,) = [row for row in kit.store.lease_list() if row.key == "k"]
    assert lease.owner is None  # the key is free for the next claim
    assert kit.store.job_rescue(JobRescue(job.id, job.fence, kit.now(), reason)) is None


def test_worker_events_are_in_the_table() -> None:
    """Every event a worker records moves a running job to one state the table allows, and a
    failed attempt is retried exactly while attempts remain."""
    for event, state in lifecycle.FINISH_STATE.items():
        assert lifecycle.TRANSITIONS[(S.RUNNING, event)] == {state}
        assert state in lifecycle.FINISH_TARGETS
    assert set(lifecycle.FINISH_STATE) == {JobEvent.SUCCEED, JobEvent.FAIL, JobEvent.CANCEL,
                                           JobEvent.RETRY, JobEvent.RELEASE}
    assert [lifecycle.attempt_failed(n, 3) for n in (1, 2, 3, 4)] == [
        JobEvent.RETRY, JobEvent.RETRY, JobEvent.FAIL, JobEvent.FAIL]
    assert [lifecycle.rescue_state(n, 2) for n in (1, 2, 3)] == [S.RETRYABLE, S.RETRYABLE,
                                                                  S.FAILED]
    for rescues in (1, 2, 3):
        assert lifecycle.rescue_state(rescues, 2) in lifecycle.TRANSITIONS[(S.RUNNING,
                                                                             JobEvent.RESCUE)]


@pytest.mark.parametrize("state", [S.SCHEDULED, S.AVAILABLE])
def test_skip_overlap(kit: Kit, state: JobState) -> None:
    kit.insert(singleton_key="k")
    holder = kit.claim_one(ttl=600)  # still held when the victim is due
    victim = _slot_job(kit, run_in=60 if state == S.SCHEDULED else 0, key="k")
    assert victim.state == state
    kit.clock.advance(120)
    result = kit.claim(limit=10)
    assert result.jobs == []
    assert [j.id for j in result.skipped_overlap] == [victim.id]
    after = kit.get(victim.id)
    assert after.state in lifecycle.TRANSITIONS[(state, JobEvent.SKIP_OVERLAP)]
    assert outcome(kit, after) == SlotOutcome.SKIPPED_OVERLAP
    assert after.errors[-1].message == lifecycle.skipped_note("k", holder.id)


@pytest.mark.parametrize("state", list(JobState))
def test_human_actions_follow_the_table(kit: Kit, state: JobState) -> None:
    job = job_in(kit, state)
    cancelled = kit.store.job_cancel(job.id, kit.now(), "by hand")
    action = lifecycle.cancel_action(state)
    if action == CancelAction.NOTHING:
        assert cancelled == job
    else:
        waiting = action == CancelAction.CANCEL
        event = JobEvent.CANCEL_WAITING if waiting else JobEvent.REQUEST_CANCEL
        assert cancelled.state in lifecycle.TRANSITIONS[(state, event)]

    other = job_in(kit, state)
    retry = lifecycle.retry_action(state)
    if retry == RetryAction.REFUSE:
        with pytest.raises(ConfigError, match="can be retried"):
            kit.store.job_retry(other.id, kit.now())
        assert kit.get(other.id) == other
    else:
        assert kit.store.job_retry(other.id, kit.now()).state == S.AVAILABLE


@pytest.mark.parametrize("state", [s for s in JobState if s != S.RUNNING])
def test_finish_refused_outside_running(kit: Kit, state: JobState) -> None:
    job = job_in(kit, state)
    for target in lifecycle.FINISH_TARGETS:
        assert not kit.store.job_finish(JobFinish(job.id, job.fence, kit.now(), target))
    assert kit.store.job_rescue(JobRescue(job.id, job.fence, kit.now(), "no")) is None
    assert kit.get(job.id) == job


def test_a_finish_target_outside_the_table_is_refused(kit: Kit) -> None:
    job = _running(kit)
    with pytest.raises(ValueError):
        kit.store.job_finish(JobFinish(job.id, job.fence, kit.now(), S.AVAILABLE))

