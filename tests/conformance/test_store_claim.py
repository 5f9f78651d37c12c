"""Conformance: claiming, finishing, retries, cancellation, manual retry and rescue."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from oncely.errors import ConfigError, NotFound
from oncely.store.params import JobClaimParams, JobFinish, JobInsert, LeaseRenewal
from oncely.types import ErrorKind, JobState

if TYPE_CHECKING:
    from conftest import Kit


# claim -----------------------------------------------------------------------------------------


def test_claim_orders_by_priority_then_run_at_then_id(kit: Kit) -> None:
    low_old = kit.insert("low-old", run_at=kit.later(-20))
    high_new = kit.insert("high-new", priority=10, run_at=kit.later(-1))
    mid_a = kit.insert("mid-a", priority=5, run_at=kit.later(-5))
    mid_b = kit.insert("mid-b", priority=5, run_at=kit.later(-5))
    mid_older = kit.insert("mid-older", priority=5, run_at=kit.later(-9))
    negative = kit.insert("negative", priority=-3, run_at=kit.later(-60))
    claimed = kit.claim(limit=10).jobs
    assert [job.id for job in claimed] == [
        high_new.id,
        mid_older.id,
        mid_a.id,
        mid_b.id,
        low_old.id,
        negative.id,
    ]


def test_claim_starts_the_job(kit: Kit) -> None:
    job = kit.insert(max_attempts=3)
    claimed = kit.claim_one("worker-a", ttl=45)
    assert claimed.id == job.id
    assert claimed.state == JobState.RUNNING
    assert claimed.attempt == 1
    assert claimed.lease_owner == "worker-a"
    assert claimed.lease_expires_at == kit.later(45)
    assert claimed.started_at == kit.now()
    assert claimed.fence == 1
    assert kit.get(job.id) == claimed


def test_claimed_jobs_are_the_rows_the_claim_wrote(kit: Kit) -> None:
    """A claim's jobs equal what the store then holds, for a batch of plain jobs, a retry (an
    earlier attempt, its error and checkpoint), a keyed job and a singleton."""
    retried = kit.insert(max_attempts=3, args={"n": 1}, timeout=5.0)
    first = kit.claim_one()
    assert kit.store.job_checkpoint(first.id, first.fence, {"step": 2}, kit.now())
    assert kit.finish(first, JobState.RETRYABLE, retry_at=kit.now(), error=kit.error(first))
    kit.clock.advance(1)
    others = [kit.insert(priority=2, args={"i": i}) for i in range(3)]
    others.append(kit.insert(concurrency_key="c", queue="q2"))
    others.append(kit.insert(singleton_key="k"))
    claimed = kit.claim(limit=10, ttl=40).jobs
    assert sorted(job.id for job in claimed) == sorted([retried.id, *(job.id for job in others)])
    for job in claimed:
        assert kit.get(job.id) == job
    again = next(job for job in claimed if job.id == retried.id)
    assert (again.attempt, again.fence, again.checkpoint) == (2, first.fence + 1, {"step": 2})
    assert len(again.errors) == 1 and again.lease_expires_at == kit.later(40)


def test_claim_respects_limit_and_queues(kit: Kit) -> None:
    for queue in ("a", "b", "a", "c", "a"):
        kit.insert(queue=queue)
    assert kit.claim(limit=0).jobs == []
    assert len(kit.claim(limit=2, queues=("a",)).jobs) == 2
    second = kit.claim(limit=10, queues=("a", "c")).jobs
    assert sorted(job.queue for job in second) == ["a", "c"]
    rest = kit.claim(limit=10).jobs
    assert [job.queue for job in rest] == ["b"]
    assert kit.claim(limit=10).jobs == []


def test_claim_never_returns_a_job_twice(kit: Kit) -> None:
    for _ in range(5):
        kit.insert()
    first = kit.claim("w1", limit=3).jobs
    second = kit.claim("w2", limit=3).jobs
    assert len(first) == 3 and len(second) == 2
    assert not {job.id for job in first} & {job.id for job in second}
    assert kit.claim("w3").jobs == []


def test_claim_skips_finished_jobs(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    assert kit.finish(job)
    kit.clock.advance(3600)
    assert kit.claim().jobs == []


# finish ----------------------------------------------------------------------------------------


def test_finish_succeeded_records_result(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    kit.clock.advance(2)
    assert kit.finish(job, result={"rows": 3, "ok": True})
    done = kit.get(job.id)
    assert done.state == JobState.SUCCEEDED
    assert done.finished_at == kit.now()
    assert done.result == {"rows": 3, "ok": True}
    assert done.attempt == 1 and done.errors == ()
    assert done.lease_owner is None and done.lease_expires_at is None


def test_finish_failed_appends_error(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    error = kit.error(job, message="it broke")
    assert kit.finish(job, JobState.FAILED, error=error)
    failed = kit.get(job.id)
    assert failed.state == JobState.FAILED
    assert failed.finished_at == kit.now()
    assert failed.errors == (error,)


def test_retryable_waits_for_retry_at_and_accumulates_errors(kit: Kit) -> None:
    kit.insert(max_attempts=3)
    first = kit.claim_one()
    error1 = kit.error(first, message="first")
    assert kit.finish(first, JobState.RETRYABLE, error=error1, retry_at=kit.later(30))
    waiting = kit.get(first.id)
    assert waiting.state == JobState.RETRYABLE
    assert waiting.run_at == kit.later(30)
    assert waiting.finished_at is None
    assert kit.claim().jobs == []

    kit.clock.advance(30)
    second = kit.claim_one()
    assert second.id == first.id
    assert second.attempt == 2
    assert second.fence > first.fence
    error2 = kit.error(second, ErrorKind.TIMEOUT, "second")
    assert kit.finish(second, JobState.FAILED, error=error2)
    assert kit.get(first.id).errors == (error1, error2)


def test_release_refunds_the_attempt(kit: Kit) -> None:
    kit.insert(max_attempts=2)
    job = kit.claim_one()
    error = kit.error(job, ErrorKind.SHUTDOWN, "worker stopping")
    assert kit.finish(job, JobState.RETRYABLE, error=error, retry_at=kit.now(), refund_attempt=True)
    released = kit.get(job.id)
    assert released.state == JobState.RETRYABLE
    assert released.attempt == 0
    assert released.lease_owner is None and released.lease_expires_at is None
    again = kit.claim_one()
    assert again.attempt == 1


def test_finish_needs_the_current_fence(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    stale = JobFinish(job.id, job.fence - 1, kit.now(), JobState.SUCCEEDED)
    assert not kit.store.job_finish(stale)
    assert kit.get(job.id).state == JobState.RUNNING
    assert kit.finish(job)
    assert not kit.finish(job, JobState.FAILED)
    assert kit.get(job.id).state == JobState.SUCCEEDED


def test_finish_of_a_waiting_or_missing_job_is_refused(kit: Kit) -> None:
    job = kit.insert()
    assert not kit.finish(job)
    assert kit.get(job.id).state == JobState.AVAILABLE
    missing = JobFinish(424242, 1, kit.now(), JobState.SUCCEEDED)
    assert not kit.store.job_finish(missing)


def test_finish_after_lease_expiry_without_takeover_is_accepted(kit: Kit) -> None:
    kit.insert(singleton_key="k")
    job = kit.claim_one()
    kit.clock.advance(kit.ttl + 5)
    assert kit.finish(job)
    assert kit.get(job.id).state == JobState.SUCCEEDED


# cancel ----------------------------------------------------------------------------------------


def test_cancel_waiting_job_ends_it(kit: Kit) -> None:
    job = kit.insert(run_at=kit.later(60))
    cancelled = kit.store.job_cancel(job.id, kit.now(), "not needed")
    assert cancelled.state == JobState.CANCELLED
    assert cancelled.finished_at == kit.now()
    assert [(e.kind, e.message) for e in cancelled.errors] == [(ErrorKind.CANCELLED, "not needed")]
    assert kit.get(job.id) == cancelled
    kit.clock.advance(120)
    assert kit.claim().jobs == []


def test_cancel_running_job_requests_it_through_renewal(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    flagged = kit.store.job_cancel(job.id, kit.now(), "stop it")
    assert flagged.state == JobState.RUNNING and flagged.cancel_requested
    answer = kit.store.lease_renew("w1", kit.now(), kit.ttl, [LeaseRenewal(job.id, job.fence)])
    assert answer[job.id].renewed and answer[job.id].cancel_requested
    error = kit.error(job, ErrorKind.CANCELLED, "stop it")
    assert kit.finish(job, JobState.CANCELLED, error=error)
    assert kit.get(job.id).state == JobState.CANCELLED


def test_cancel_finished_job_changes_nothing(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    assert kit.finish(job)
    before = kit.get(job.id)
    assert kit.store.job_cancel(job.id, kit.now(), "too late") == before
    assert kit.get(job.id) == before


def test_cancel_missing_job_is_not_found(kit: Kit) -> None:
    with pytest.raises(NotFound):
        kit.store.job_cancel(424242, kit.now(), "x")


# manual retry ----------------------------------------------------------------------------------


def test_manual_retry_of_failed_job_gives_one_more_attempt(kit: Kit) -> None:
    kit.insert(max_attempts=1)
    job = kit.claim_one()
    assert kit.finish(job, JobState.FAILED, error=kit.error(job))
    kit.clock.advance(10)
    retried = kit.store.job_retry(job.id, kit.now())
    assert retried.state == JobState.AVAILABLE
    assert retried.run_at == kit.now()
    assert retried.max_attempts == 2
    assert retried.finished_at is None
    again = kit.claim_one()
    assert again.id == job.id and again.attempt == 2


@pytest.mark.parametrize("how", ["cancelled", "retryable", "scheduled"])
def test_manual_retry_makes_job_available_now(kit: Kit, how: str) -> None:
    job = kit.insert(run_at=kit.later(300) if how == "scheduled" else None, max_attempts=5)
    if how == "cancelled":
        kit.store.job_cancel(job.id, kit.now(), "oops")
    elif how == "retryable":
        running = kit.claim_one()
        assert kit.finish(running, JobState.RETRYABLE, retry_at=kit.later(300))
    retried = kit.store.job_retry(job.id, kit.now())
    assert retried.state == JobState.AVAILABLE and retried.run_at == kit.now()
    assert retried.max_attempts == 5
    assert kit.claim_one().id == job.id


def test_manual_retry_refuses_running_and_succeeded(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    with pytest.raises(ConfigError, match="running"):
        kit.store.job_retry(job.id, kit.now())
    assert kit.finish(job)
    with pytest.raises(ConfigError, match="succeeded"):
        kit.store.job_retry(job.id, kit.now())
    with pytest.raises(NotFound):
        kit.store.job_retry(424242, kit.now())


# expiry and rescue -----------------------------------------------------------------------------


def test_job_expired_lists_running_jobs_past_their_lease(kit: Kit) -> None:
    kit.insert()
    kit.insert()
    kit.insert()
    short = kit.claim_one(ttl=10)
    long = kit.claim_one(ttl=20)
    assert kit.store.job_expired(kit.now(), 10) == []
    kit.clock.advance(10)
    assert [job.id for job in kit.store.job_expired(kit.now(), 10)] == [short.id]
    kit.clock.advance(15)
    assert [job.id for job in kit.store.job_expired(kit.now(), 10)] == [short.id, long.id]
    assert [job.id for job in kit.store.job_expired(kit.now(), 1)] == [short.id]


def test_rescue_retries_an_expired_job(kit: Kit) -> None:
    kit.insert(max_attempts=3, singleton_key="k")
    job = kit.claim_one("dead-worker")
    kit.clock.advance(kit.ttl + 1)
    error = kit.error(job, ErrorKind.LEASE_EXPIRED, "worker presumed dead")
    rescue = JobFinish(
        job.id,
        job.fence,
        kit.now(),
        JobState.RETRYABLE,
        error=error,
        retry_at=kit.now(),
        require_expired_lease=True,
    )
    assert kit.store.job_finish(rescue)
    assert kit.get(job.id).state == JobState.RETRYABLE
    assert kit.store.job_expired(kit.now(), 10) == []
    again = kit.claim_one("live-worker")
    assert again.id == job.id and again.attempt == 2 and again.fence == job.fence + 1


def test_rescue_loses_to_a_renewal(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    kit.clock.advance(kit.ttl + 1)
    assert [j.id for j in kit.store.job_expired(kit.now(), 10)] == [job.id]
    answer = kit.store.lease_renew("w1", kit.now(), kit.ttl, [LeaseRenewal(job.id, job.fence)])
    assert answer[job.id].renewed
    rescue = JobFinish(job.id, job.fence, kit.now(), JobState.FAILED, require_expired_lease=True)
    assert not kit.store.job_finish(rescue)
    assert kit.get(job.id).state == JobState.RUNNING


def test_rescue_of_a_job_whose_key_was_taken_over(kit: Kit) -> None:
    kit.insert("old", singleton_key="k")
    old = kit.claim_one("dead-worker")
    kit.clock.advance(kit.ttl + 1)
    kit.insert("new", singleton_key="k")
    new = kit.claim_one("live-worker")
    assert new.fence == old.fence + 1
    rescue = JobFinish(old.id, old.fence, kit.now(), JobState.FAILED, require_expired_lease=True)
    assert kit.store.job_finish(rescue)
    assert kit.get(old.id).state == JobState.FAILED
    lease = {row.key: row for row in kit.store.lease_list()}["k"]
    assert (lease.owner, lease.job_id, lease.fence) == ("live-worker", new.id, new.fence)
    assert kit.store.job_fence_current(new.id, new.fence, kit.now())


# renewal ---------------------------------------------------------------------------------------


def test_lease_renew_extends_current_leases_only(kit: Kit) -> None:
    kit.insert()
    kit.insert(singleton_key="k")
    kit.insert()
    plain, single, other = kit.claim("w1", limit=2).jobs + kit.claim("w2", limit=1).jobs
    kit.clock.advance(10)
    answer = kit.store.lease_renew(
        "w1",
        kit.now(),
        60,
        [
            LeaseRenewal(plain.id, plain.fence),
            LeaseRenewal(single.id, single.fence),
            LeaseRenewal(other.id, other.fence),  # held by w2
            LeaseRenewal(424242, 1),
        ],
    )
    assert answer[plain.id].renewed and answer[plain.id].lease_expires_at == kit.later(60)
    assert answer[single.id].renewed and not answer[single.id].cancel_requested
    assert not answer[other.id].renewed
    assert not answer[424242].renewed
    assert kit.get(plain.id).lease_expires_at == kit.later(60)
    assert kit.get(other.id).lease_expires_at == kit.later(kit.ttl - 10)
    lease = {row.key: row for row in kit.store.lease_list()}["k"]
    assert lease.expires_at == kit.later(60)


def test_lease_renew_refuses_stale_fence_and_finished_job(kit: Kit) -> None:
    kit.insert()
    job = kit.claim_one()
    stale = kit.store.lease_renew("w1", kit.now(), 30, [LeaseRenewal(job.id, job.fence + 1)])
    assert not stale[job.id].renewed
    assert kit.finish(job)
    done = kit.store.lease_renew("w1", kit.now(), 30, [LeaseRenewal(job.id, job.fence)])
    assert not done[job.id].renewed
    assert kit.store.lease_renew("w1", kit.now(), 30, []) == {}


def test_a_second_claim_param_set_is_independent(kit: Kit) -> None:
    kit.insert(queue="a")
    params = JobClaimParams("w", kit.now(), 5, 30.0, ("a",))
    assert [job.queue for job in kit.store.job_claim(params).jobs] == ["a"]
    kit.store.job_insert(JobInsert(task="t", queue="a"), kit.now())
    assert len(kit.store.job_claim(params).jobs) == 1
