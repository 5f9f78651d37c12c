"""Conformance: singleton keys, fences, zombies, fenced writes and the overlap policy at claim."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from oncely.errors import FenceRejected
from oncely.store.params import JobFilter, JobFinish, JobInsert, LeaseRenewal
from oncely.types import WAITING_STATES, ErrorKind, JobState, Overlap, SlotOutcome

if TYPE_CHECKING:
    from conftest import Kit


def leases(kit: Kit) -> dict[str, tuple[int, str | None, int | None]]:
    return {row.key: (row.fence, row.owner, row.job_id) for row in kit.store.lease_list()}


# singleton keys --------------------------------------------------------------------------------


def test_singleton_key_lets_one_job_run_at_a_time(kit: Kit) -> None:
    first = kit.insert(singleton_key="k")
    second = kit.insert(singleton_key="k")
    other = kit.insert(singleton_key="other")
    claimed = kit.claim(limit=10).jobs
    assert [job.id for job in claimed] == [first.id, other.id]
    assert kit.get(second.id).state == JobState.AVAILABLE
    assert leases(kit)["k"] == (claimed[0].fence, "w1", first.id)

    assert kit.claim("w2").jobs == []
    assert kit.finish(claimed[0])
    assert leases(kit)["k"] == (claimed[0].fence, None, None)

    next_run = kit.claim_one("w2")
    assert next_run.id == second.id
    assert next_run.fence == claimed[0].fence + 1
    assert leases(kit)["k"] == (next_run.fence, "w2", second.id)


def test_fence_grows_per_key_on_every_grant(kit: Kit) -> None:
    fences = []
    for _ in range(3):
        kit.insert(singleton_key="k")
        job = kit.claim_one()
        fences.append(job.fence)
        assert kit.finish(job)
    assert fences == [fences[0], fences[0] + 1, fences[0] + 2]


def test_plain_job_fence_grows_on_its_own_row(kit: Kit) -> None:
    kit.insert(max_attempts=3)
    first = kit.claim_one()
    assert kit.finish(first, JobState.RETRYABLE, retry_at=kit.now())
    second = kit.claim_one()
    assert second.fence == first.fence + 1


def test_zombie_cannot_finish_after_takeover_of_its_key(kit: Kit) -> None:
    kit.insert("run", singleton_key="k")
    zombie = kit.claim_one("paused-worker")
    kit.clock.advance(kit.ttl + 1)  # the lease expires while the worker is paused
    kit.insert("run", singleton_key="k")
    successor = kit.claim_one("live-worker")
    assert successor.fence == zombie.fence + 1

    assert not kit.store.job_fence_current(zombie.id, zombie.fence, kit.now())
    assert not kit.finish(zombie)
    assert not kit.finish(zombie, JobState.RETRYABLE, retry_at=kit.now())
    assert not kit.store.job_checkpoint(zombie.id, zombie.fence, {"step": 9}, kit.now())
    renew = kit.store.lease_renew(
        "paused-worker", kit.now(), 30, [LeaseRenewal(zombie.id, zombie.fence)]
    )
    assert not renew[zombie.id].renewed
    with (
        pytest.raises(FenceRejected),
        kit.store.fenced_transaction(zombie.id, zombie.fence, kit.now()),
    ):
        pass
    assert kit.get(zombie.id).state == JobState.RUNNING
    assert kit.finish(successor)


def test_zombie_cannot_write_after_rescue_and_reclaim(kit: Kit) -> None:
    kit.insert(max_attempts=3)
    zombie = kit.claim_one("paused-worker")
    kit.clock.advance(kit.ttl + 1)
    rescue = JobFinish(
        zombie.id,
        zombie.fence,
        kit.now(),
        JobState.RETRYABLE,
        error=kit.error(zombie, ErrorKind.LEASE_EXPIRED, "lease expired"),
        retry_at=kit.now(),
        require_expired_lease=True,
    )
    assert kit.store.job_finish(rescue)
    assert not kit.finish(zombie)  # rescued: no longer running under that fence
    successor = kit.claim_one("live-worker")
    assert successor.id == zombie.id and successor.fence > zombie.fence
    assert not kit.finish(zombie)
    assert not kit.store.job_checkpoint(zombie.id, zombie.fence, "late", kit.now())
    assert kit.finish(successor, result="ok")
    done = kit.get(zombie.id)
    assert done.state == JobState.SUCCEEDED and done.result == "ok" and done.checkpoint is None


# fence checks and fenced writes ----------------------------------------------------------------


def test_job_fence_current(kit: Kit) -> None:
    kit.insert(singleton_key="k")
    job = kit.claim_one()
    assert kit.store.job_fence_current(job.id, job.fence, kit.now())
    assert not kit.store.job_fence_current(job.id, job.fence + 1, kit.now())
    assert not kit.store.job_fence_current(job.id, job.fence, kit.later(kit.ttl))
    assert not kit.store.job_fence_current(424242, 1, kit.now())
    assert kit.finish(job)
    assert not kit.store.job_fence_current(job.id, job.fence, kit.now())


def test_checkpoint_is_fenced_and_kept_across_attempts(kit: Kit) -> None:
    kit.insert(max_attempts=2)
    job = kit.claim_one()
    assert kit.store.job_checkpoint(job.id, job.fence, {"cursor": 41, "done": ["a"]}, kit.now())
    assert kit.store.job_checkpoint(job.id, job.fence, {"cursor": 42, "done": ["a"]}, kit.now())
    assert not kit.store.job_checkpoint(job.id, job.fence + 1, {"cursor": 0}, kit.now())
    assert kit.get(job.id).checkpoint == {"cursor": 42, "done": ["a"]}
    assert kit.finish(job, JobState.RETRYABLE, retry_at=kit.now())
    assert not kit.store.job_checkpoint(job.id, job.fence, {"cursor": 0}, kit.now())
    again = kit.claim_one()
    assert again.checkpoint == {"cursor": 42, "done": ["a"]}


def test_checkpoint_refused_once_the_lease_expired(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    kit.clock.advance(kit.ttl)
    assert not kit.store.job_checkpoint(job.id, job.fence, {"late": True}, kit.now())
    assert kit.get(job.id).checkpoint is None


def test_fenced_transaction_commits_under_a_live_fence(kit: Kit) -> None:
    kit.insert(singleton_key="k")
    job = kit.claim_one()
    with kit.store.fenced_transaction(job.id, job.fence, kit.now()) as conn:
        side_effect = kit.store.job_insert(JobInsert(task="effect"), kit.now(), conn=conn)
    assert kit.get(side_effect.job.id).task == "effect"


def test_fenced_transaction_rolls_back_on_error(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    with (
        pytest.raises(ValueError),
        kit.store.fenced_transaction(job.id, job.fence, kit.now()) as conn,
    ):
        kit.store.job_insert(JobInsert(task="effect"), kit.now(), conn=conn)
        raise ValueError("handler failed")
    assert kit.store.job_list(JobFilter(task="effect")) == []


@pytest.mark.parametrize("why", ["stale fence", "expired lease", "finished", "not running"])
def test_fenced_transaction_rejects(kit: Kit, why: str) -> None:
    kit.insert()
    job = kit.claim_one()
    fence, now = job.fence, kit.now()
    if why == "stale fence":
        fence -= 1
    elif why == "expired lease":
        now = kit.later(kit.ttl + 1)
    elif why == "finished":
        assert kit.finish(job)
    else:
        job = kit.insert()
    ran = []
    with (
        pytest.raises(FenceRejected) as caught,
        kit.store.fenced_transaction(job.id, fence, now) as conn,
    ):
        ran.append(conn)
    assert ran == []
    assert (caught.value.job_id, caught.value.fence) == (job.id, fence)


# overlap policy at claim -----------------------------------------------------------------------


def test_overlap_skip_cancels_a_slot_while_the_previous_runs(kit: Kit) -> None:
    kit.ttl = 7200  # the first run outlives the hour
    t0 = kit.now()
    first = kit.slot("hourly", t0, key="hourly")
    running = kit.claim_one()
    assert running.id == first.job_id and running.slot == t0 and running.schedule == "hourly"

    kit.clock.advance(3600)
    t1 = kit.now()
    second = kit.slot("hourly", t1, key="hourly")
    result = kit.claim()
    assert result.jobs == []
    assert [job.id for job in result.skipped_overlap] == [second.job_id]
    skipped = kit.get(second.job_id or 0)
    assert skipped.state == JobState.CANCELLED
    ledger = {row.slot: row for row in kit.store.ledger_list("hourly")}
    assert ledger[t1].outcome == SlotOutcome.SKIPPED_OVERLAP
    assert ledger[t0].outcome == SlotOutcome.ENQUEUED

    assert kit.finish(running)
    ledger = {row.slot: row for row in kit.store.ledger_list("hourly")}
    assert ledger[t0].outcome == SlotOutcome.RAN
    assert ledger[t1].outcome == SlotOutcome.SKIPPED_OVERLAP
    assert kit.claim().jobs == []


def test_overlap_buffer_one_waits_for_the_previous_run(kit: Kit) -> None:
    kit.ttl = 600
    t0 = kit.now()
    kit.slot("s", t0, key="s", overlap=Overlap.BUFFER_ONE)
    running = kit.claim_one()
    kit.clock.advance(60)
    buffered = kit.slot("s", kit.now(), key="s", overlap=Overlap.BUFFER_ONE)
    result = kit.claim()
    assert result.jobs == [] and result.skipped_overlap == []
    assert kit.get(buffered.job_id or 0).state == JobState.AVAILABLE
    assert kit.finish(running)
    assert kit.claim_one().id == buffered.job_id


def test_overlap_allow_runs_side_by_side(kit: Kit) -> None:
    t0 = kit.now()
    kit.slot("fast", t0, overlap=Overlap.ALLOW)
    kit.slot("fast", t0 + timedelta(seconds=1), overlap=Overlap.ALLOW)
    kit.clock.advance(1)
    assert len(kit.claim().jobs) == 2


def test_retries_of_a_slot_wait_instead_of_being_skipped(kit: Kit) -> None:
    t0 = kit.now()
    slot = kit.slot("s", t0, key="s", max_attempts=3)
    first = kit.claim_one()
    assert first.id == slot.job_id
    assert kit.finish(first, JobState.RETRYABLE, retry_at=kit.later(10))
    kit.insert("manual", singleton_key="s")
    holder = kit.claim_one()
    assert holder.task == "manual"
    kit.clock.advance(10)
    result = kit.claim()
    assert result.jobs == [] and result.skipped_overlap == []
    assert kit.get(first.id).state == JobState.RETRYABLE
    assert kit.finish(holder)
    assert kit.claim_one().id == first.id


def test_non_slot_singleton_jobs_wait_even_with_skip(kit: Kit) -> None:
    kit.insert(singleton_key="k", overlap=Overlap.SKIP)
    waiting = kit.insert(singleton_key="k", overlap=Overlap.SKIP)
    result = kit.claim()
    assert len(result.jobs) == 1 and result.skipped_overlap == []
    assert kit.get(waiting.id).state == JobState.AVAILABLE


def test_two_due_slots_of_one_key_in_one_claim(kit: Kit) -> None:
    t0 = kit.now()
    first = kit.slot("s", t0, key="s")
    second = kit.slot("s", t0 + timedelta(seconds=1), key="s")
    buffered = kit.slot("b", t0, key="b", overlap=Overlap.BUFFER_ONE)
    waiting = kit.slot("b", t0 + timedelta(seconds=1), key="b", overlap=Overlap.BUFFER_ONE)
    kit.clock.advance(1)
    result = kit.claim(limit=10)
    assert sorted(job.id for job in result.jobs) == sorted([first.job_id, buffered.job_id])
    assert [job.id for job in result.skipped_overlap] == [second.job_id]
    assert kit.get(waiting.job_id or 0).state in WAITING_STATES


def test_expired_key_lease_can_be_taken_over(kit: Kit) -> None:
    kit.insert(singleton_key="k")
    old = kit.claim_one("w1")
    kit.insert(singleton_key="k")
    assert kit.claim("w2").jobs == []
    kit.clock.advance(kit.ttl - 1)
    assert kit.claim("w2").jobs == []
    kit.clock.advance(1)
    new = kit.claim_one("w2")
    assert new.fence == old.fence + 1
    assert leases(kit)["k"][1:] == ("w2", new.id)


def test_finish_many_checks_each_fence_on_its_own(kit):
    first, second = kit.insert(), kit.insert()
    claimed = {job.id: job for job in kit.claim(limit=2).jobs}
    a, b = claimed[first.id], claimed[second.id]
    stale = JobFinish(b.id, b.fence - 1, kit.now(), JobState.SUCCEEDED)
    fresh = JobFinish(a.id, a.fence, kit.now(), JobState.SUCCEEDED, result={"ok": 1})
    assert kit.store.job_finish_many([fresh, stale]) == [True, False]
    assert kit.get(a.id).state == JobState.SUCCEEDED and kit.get(a.id).result == {"ok": 1}
    assert kit.get(b.id).state == JobState.RUNNING
    assert kit.store.job_finish_many([]) == []


def test_finish_many_records_a_mixed_batch_like_single_finishes(kit: Kit) -> None:
    """Plain successes, a keyed one, a slot's, a failure, a retry and a stale fence in one batch:
    each ends as its own finish would, with its execution, key lease and ledger row."""
    plain, timed, keyed, failing, retried, stale = (
        kit.insert(), kit.insert(), kit.insert(singleton_key="k"), kit.insert(),
        kit.insert(max_attempts=2), kit.insert(),
    )
    slot = kit.slot("s", kit.now()).job_id or 0
    jobs = {job.id: job for job in kit.claim(limit=10).jobs}
    assert len(jobs) == 7
    later = kit.later(2)
    error = kit.error(jobs[failing.id])
    batch = [
        JobFinish(plain.id, jobs[plain.id].fence, kit.now(), JobState.SUCCEEDED, result=[1]),
        JobFinish(timed.id, jobs[timed.id].fence, later, JobState.SUCCEEDED),
        JobFinish(keyed.id, jobs[keyed.id].fence, kit.now(), JobState.SUCCEEDED),
        JobFinish(slot, jobs[slot].fence, kit.now(), JobState.SUCCEEDED, result="done"),
        JobFinish(failing.id, jobs[failing.id].fence, kit.now(), JobState.FAILED, error=error),
        JobFinish(retried.id, jobs[retried.id].fence, kit.now(), JobState.RETRYABLE,
                  retry_at=later, error=kit.error(jobs[retried.id])),
        JobFinish(stale.id, jobs[stale.id].fence - 1, kit.now(), JobState.SUCCEEDED),
    ]
    assert kit.store.job_finish_many(batch) == [True] * 6 + [False]

    assert kit.get(plain.id).result == [1] and kit.get(plain.id).finished_at == kit.now()
    assert kit.get(timed.id).finished_at == later
    assert kit.get(slot).result == "done"
    assert [kit.get(j.id).state for j in (keyed, failing, retried, stale)] == [
        JobState.SUCCEEDED, JobState.FAILED, JobState.RETRYABLE, JobState.RUNNING]
    assert kit.get(retried.id).run_at == later
    assert leases(kit)["k"][1:] == (None, None)
    assert [row.outcome for row in kit.store.ledger_list("s")] == [SlotOutcome.RAN]
    ended = {e.job_id: (e.outcome, e.ended_at, e.error_kind) for e in kit.store.execution_list()}
    assert ended == {
        plain.id: ("succeeded", kit.now(), None),
        timed.id: ("succeeded", later, None),
        keyed.id: ("succeeded", kit.now(), None),
        slot: ("succeeded", kit.now(), None),
        failing.id: ("failed", kit.now(), "error"),
        retried.id: ("retryable", kit.now(), "error"),
        stale.id: (None, None, None),
    }
    assert kit.get(plain.id).lease_owner is None and kit.get(plain.id).lease_expires_at is None


def test_finish_many_of_plain_successes_records_each_once(kit: Kit) -> None:
    """A success sent again (its first reply lost) counts as recorded and changes nothing."""
    inserted = [kit.insert() for _ in range(5)]
    claimed = kit.claim(limit=5).jobs
    batch = [JobFinish(job.id, job.fence, kit.now(), JobState.SUCCEEDED, result=job.id)
             for job in claimed]
    assert kit.store.job_finish_many(batch) == [True] * 5
    again = JobFinish(batch[0].job_id, batch[0].fence, kit.later(1), JobState.SUCCEEDED)
    assert kit.store.job_finish_many([again]) == [True]
    for job in inserted:
        stored = kit.get(job.id)
        assert (stored.state, stored.result, stored.finished_at) == (
            JobState.SUCCEEDED, job.id, kit.now())
    executions = kit.store.execution_list()
    assert sorted(e.job_id for e in executions) == sorted(job.id for job in inserted)
    assert {e.outcome for e in executions} == {"succeeded"}
