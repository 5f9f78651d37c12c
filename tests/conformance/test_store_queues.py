"""Conformance: queue controls (pause, max_running, rate limits, max_per_key) are enforced inside
the claim on every store, dead letters come back in batches, and retention works per queue."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from oncely import readmodel
from oncely.store.controls import ClaimRoom, ControlKind, ControlUpsert, WaitReason
from oncely.store.params import (
    JobClaimParams,
    JobFilter,
    JobFinish,
    JobInsert,
    PruneParams,
    RetryFailed,
    UpsertOutcome,
)
from oncely.types import JobState, Overlap, SlotOutcome

if TYPE_CHECKING:
    from conftest import Kit

QUEUE, TASK = ControlKind.QUEUE, ControlKind.TASK


def control(kit: Kit, kind: ControlKind, name: str, **fields: Any) -> UpsertOutcome:
    spec_hash = repr(sorted(fields.items()))
    return kit.store.control_upsert(ControlUpsert(kind, name, kit.now(), spec_hash=spec_hash,
                                                  **fields))


def insert(kit: Kit, count: int, **fields: Any) -> list[int]:
    return [kit.insert(**fields).id for _ in range(count)]


def claimed_ids(kit: Kit, worker: str = "w1", limit: int = 10) -> list[int]:
    return [job.id for job in kit.claim(worker, limit=limit).jobs]


def running(kit: Kit, queue: str | None = None) -> list[int]:
    jobs = kit.store.job_list(JobFilter(state=JobState.RUNNING, queue=queue, limit=1000))
    return [job.id for job in jobs]


# max_running -----------------------------------------------------------------------------------


def test_without_controls_a_claim_reports_no_waits(kit: Kit) -> None:
    insert(kit, 3)
    result = kit.claim(limit=10)
    assert len(result.jobs) == 3 and result.waits == []


def test_max_running_caps_a_queue_across_workers_and_leaves_other_queues_alone(kit: Kit) -> None:
    assert control(kit, QUEUE, "q", max_running=2) == UpsertOutcome.CREATED
    limited = insert(kit, 5, queue="q")
    other = insert(kit, 3, queue="other")
    first = kit.claim("w1", limit=10)
    assert sorted(job.id for job in first.jobs) == sorted(limited[:2] + other)
    assert [(w.scope, w.reason) for w in first.waits] == [("queue:q", WaitReason.MAX_RUNNING)]
    assert claimed_ids(kit, "w2") == []
    assert kit.finish(kit.get(limited[0]))
    assert claimed_ids(kit, "w2") == [limited[2]]
    assert len(running(kit, "q")) == 2


def test_max_running_counts_jobs_started_before_the_limit_was_declared(kit: Kit) -> None:
    early = insert(kit, 3, queue="q")
    assert sorted(claimed_ids(kit)) == early
    control(kit, QUEUE, "q", max_running=2)
    later = insert(kit, 2, queue="q")
    assert claimed_ids(kit) == []
    for job_id in early[:2]:
        assert kit.finish(kit.get(job_id))
    assert claimed_ids(kit) == [later[0]]


def test_limits_keep_priority_order_and_never_fail_or_skip_a_job(kit: Kit) -> None:
    control(kit, QUEUE, "q", max_running=1)
    urgent = insert(kit, 2, queue="q", priority=5)
    normal = insert(kit, 2, queue="other", priority=1)
    assert claimed_ids(kit, limit=2) == [urgent[0], normal[0]]
    held = kit.get(urgent[1])
    assert held.state == JobState.AVAILABLE and held.errors == () and held.attempt == 0


# rate limits -----------------------------------------------------------------------------------


def test_rate_limit_is_a_sliding_window_of_starts(kit: Kit) -> None:
    control(kit, QUEUE, "q", rate_limit=3, rate_window=10.0)
    jobs = insert(kit, 10, queue="q")
    t0 = kit.now()
    assert claimed_ids(kit) == jobs[:3]
    result = kit.claim()
    assert result.jobs == []
    [wait] = result.waits
    assert wait.reason == WaitReason.RATE and wait.until == t0 + timedelta(seconds=10)
    for job_id in jobs[:3]:  # finishing frees no room: the window counts starts
        assert kit.finish(kit.get(job_id))
    kit.clock.advance(6)
    assert claimed_ids(kit) == []
    kit.clock.advance(4)  # t0 + 10: the first starts leave the window (now - 10, now]
    assert claimed_ids(kit) == jobs[3:6]
    kit.clock.advance(9.999)
    assert claimed_ids(kit) == []
    kit.clock.advance(0.001)
    assert claimed_ids(kit, limit=1) == [jobs[6]]


def test_a_claim_with_an_older_clock_reading_still_counts_every_start(kit: Kit) -> None:
    """Claims read ``now`` before they wait for the lock, so they commit out of order; the log
    must still hold at most 3 starts in any 10 s of start instants."""
    control(kit, QUEUE, "q", rate_limit=3, rate_window=10.0)
    insert(kit, 3, queue="q")
    t0 = kit.now()
    assert len(kit.claim().jobs) == 3
    insert(kit, 1, queue="q")
    newer = JobClaimParams("w2", t0 + timedelta(seconds=10.5), 10, 30.0)
    assert len(kit.store.job_claim(newer).jobs) == 1
    insert(kit, 5, queue="q")
    older = JobClaimParams("w3", t0 + timedelta(seconds=9.9), 10, 30.0)
    result = kit.store.job_claim(older)
    assert result.jobs == [] and result.waits[0].reason == WaitReason.RATE


def test_the_rate_ring_turns_window_after_window_and_a_new_limit_starts_afresh(kit: Kit) -> None:
    control(kit, QUEUE, "q", rate_limit=2, rate_window=1.0)
    insert(kit, 20, queue="q")
    for _ in range(5):
        assert len(kit.claim(limit=10).jobs) == 2
        assert kit.claim(limit=10).jobs == []
        kit.clock.advance(1)
    [row] = kit.store.control_list()
    assert row.rate_seq == 10
    assert control(kit, QUEUE, "q", rate_limit=3, rate_window=60.0) == UpsertOutcome.UPDATED
    [row] = kit.store.control_list()
    assert row.rate_seq == 0
    assert len(kit.claim(limit=10).jobs) == 3
    assert kit.claim(limit=10).jobs == []


def test_rate_window_is_shared_by_every_claimer(kit: Kit) -> None:
    control(kit, QUEUE, "q", rate_limit=4, rate_window=60.0)
    insert(kit, 10, queue="q")
    got = [len(kit.claim(f"w{i}", limit=3).jobs) for i in range(4)]
    assert got == [3, 1, 0, 0]


def test_task_rate_limit_holds_that_task_only(kit: Kit) -> None:
    control(kit, TASK, "slow", rate_limit=1, rate_window=60.0)
    slow = insert(kit, 3, task="slow")
    fast = insert(kit, 3, task="fast")
    assert sorted(claimed_ids(kit)) == sorted([slow[0], *fast])
    result = kit.claim()
    assert result.jobs == [] and [w.scope for w in result.waits] == ["task:slow"]


def test_queue_and_task_limits_both_apply(kit: Kit) -> None:
    control(kit, QUEUE, "q", max_running=3)
    control(kit, TASK, "t", rate_limit=2, rate_window=60.0)
    insert(kit, 3, queue="q", task="t")
    other = insert(kit, 3, queue="q", task="u")
    got = claimed_ids(kit)
    assert len(got) == 3 and len(set(got) & set(other)) == 1


# max_per_key -----------------------------------------------------------------------------------


def test_max_per_key_runs_one_job_per_key_value(kit: Kit) -> None:
    control(kit, TASK, "meter", max_per_key=1)
    a1, a2 = insert(kit, 2, task="meter", concurrency_key="meter/org:1")
    [b1] = insert(kit, 1, task="meter", concurrency_key="meter/org:2")
    [plain] = insert(kit, 1, task="meter")
    result = kit.claim()
    assert sorted(job.id for job in result.jobs) == [a1, b1, plain]
    assert {w.reason for w in result.waits} == {WaitReason.MAX_PER_KEY}
    assert claimed_ids(kit) == []
    assert kit.finish(kit.get(a1))
    assert claimed_ids(kit) == [a2]


def test_max_per_key_counts_keys_across_workers(kit: Kit) -> None:
    control(kit, TASK, "meter", max_per_key=2)
    insert(kit, 5, task="meter", concurrency_key="meter/org:1")
    assert len(kit.claim("w1", limit=1).jobs) == 1
    assert len(kit.claim("w2", limit=5).jobs) == 1
    assert kit.claim("w3", limit=5).jobs == []


# pause -----------------------------------------------------------------------------------------


def test_a_paused_queue_claims_nothing_and_its_running_jobs_finish(kit: Kit) -> None:
    [first] = insert(kit, 1, queue="q")
    job = kit.claim_one()
    assert job.id == first
    paused = kit.store.control_pause("q", True, kit.now())
    assert paused.paused and paused.declared_at is None
    waiting = insert(kit, 3, queue="q")
    other = insert(kit, 1, queue="other")
    result = kit.claim()
    assert [j.id for j in result.jobs] == other
    assert [(w.scope, w.reason) for w in result.waits] == [("queue:q", WaitReason.PAUSED)]
    assert kit.finish(job)
    assert claimed_ids(kit) == []
    kit.store.control_pause("q", False, kit.now())
    assert claimed_ids(kit) == waiting


def test_declarations_never_touch_the_pause_flag(kit: Kit) -> None:
    kit.store.control_pause("q", True, kit.now())
    assert control(kit, QUEUE, "q", max_running=5) == UpsertOutcome.UPDATED
    assert control(kit, QUEUE, "q", max_running=5) == UpsertOutcome.UNCHANGED
    [row] = kit.store.control_list()
    assert row.paused and row.max_running == 5 and row.declared_at == kit.now()
    insert(kit, 1, queue="q")
    assert claimed_ids(kit) == []


def test_upsert_reports_created_unchanged_updated(kit: Kit) -> None:
    retention = {"failed": {"age": None, "count": 10}}
    assert control(kit, QUEUE, "q", rate_limit=1, rate_window=30.0,
                   retention=retention) == UpsertOutcome.CREATED
    kit.clock.advance(5)
    assert control(kit, QUEUE, "q", rate_limit=1, rate_window=30.0,
                   retention=retention) == UpsertOutcome.UNCHANGED
    assert control(kit, QUEUE, "q", rate_limit=2, rate_window=30.0) == UpsertOutcome.UPDATED
    [row] = kit.store.control_list()
    assert (row.rate_limit, row.rate_window, row.retention) == (2, 30.0, {})
    assert row.declared_at == kit.now() and row.scope == "queue:q"


# singletons and usage --------------------------------------------------------------------------


def test_an_overlap_skip_uses_no_room(kit: Kit) -> None:
    control(kit, QUEUE, "q", max_running=2)
    kit.slot("s", kit.now(), key="s", queue="q")
    kit.claim_one(ttl=600)
    kit.clock.advance(60)
    kit.slot("s", kit.now(), key="s", queue="q")
    [plain] = insert(kit, 1, queue="q")
    result = kit.claim()
    assert [job.id for job in result.jobs] == [plain]
    assert len(result.skipped_overlap) == 1
    assert kit.store.ledger_list("s")[0].outcome == SlotOutcome.SKIPPED_OVERLAP


def test_a_limited_queue_still_grants_singleton_keys_one_at_a_time(kit: Kit) -> None:
    control(kit, QUEUE, "q", rate_limit=10, rate_window=60.0)
    for _ in range(3):
        kit.insert(task="single", queue="q", singleton_key="single",
                   overlap=Overlap.BUFFER_ONE)
    job = kit.claim_one()
    assert job.fence >= 1 and kit.claim().jobs == []
    assert kit.finish(job)
    assert len(kit.claim().jobs) == 1


def test_usage_matches_what_the_claim_counts(kit: Kit) -> None:
    control(kit, QUEUE, "q", max_running=5, rate_limit=10, rate_window=60.0)
    control(kit, TASK, "t", max_per_key=1)
    insert(kit, 2, queue="q", task="t", concurrency_key="t/k")
    insert(kit, 2, queue="q")
    assert len(kit.claim().jobs) == 3
    usage = kit.store.control_usage(keys=["t/other"])
    assert usage.running == {"q": 3}
    assert usage.ring == {}  # the next start's slot (number 3 of 10) is still empty
    assert usage.key_running == {"t/k": 1}
    controls = [c for c in kit.store.control_list() if c.active]
    assert {c.scope: c.rate_seq for c in controls} == {"queue:q": 3, "task:t": 0}
    gate = ClaimRoom(controls, usage, kit.now())
    wait = gate.wait_for("q", "t", "t/k")
    assert wait is not None and wait.reason == WaitReason.MAX_PER_KEY
    assert gate.wait_for("q", "t", "t/other") is None


def test_the_read_model_says_why_a_due_job_waits(kit: Kit) -> None:
    control(kit, QUEUE, "q", rate_limit=1, rate_window=60.0)
    control(kit, TASK, "t", max_per_key=1)
    _, held = insert(kit, 2, queue="q")
    keyed = insert(kit, 2, task="t", concurrency_key="t/k")
    assert len(kit.claim().jobs) == 2
    until = kit.now() + timedelta(seconds=60)
    detail = readmodel.job_detail(kit.store, held, kit.now())
    shown = until.isoformat(timespec="milliseconds")
    assert detail["waiting_reason"] == f"queue q used its rate limit until {shown}"
    assert detail["limited_until"] == until.isoformat()
    keyed_detail = readmodel.job_detail(kit.store, keyed[1], kit.now())
    assert keyed_detail["waiting_reason"] == "key t/k runs its max_per_key jobs"
    assert keyed_detail["concurrency_key"] == "t/k"
    [row] = [r for r in readmodel.queue_health(kit.store, kit.now()) if r["queue"] == "q"]
    assert (row["held"], row["held_jobs"], row["limit"], row["paused"]) == ("rate", 1, "1/60s",
                                                                            False)
    kit.clock.advance(60)
    assert readmodel.job_detail(kit.store, held, kit.now())["waiting_reason"] is None


def test_threads_never_exceed_max_running_or_the_rate(kit: Kit) -> None:
    control(kit, QUEUE, "q", max_running=3)
    control(kit, QUEUE, "r", rate_limit=7, rate_window=3600.0)
    kit.store.job_insert_many([JobInsert(task="t", queue="q") for _ in range(40)], kit.now())
    kit.store.job_insert_many([JobInsert(task="t", queue="r") for _ in range(40)], kit.now())
    lock, barrier = threading.Lock(), threading.Barrier(6)
    state = {"running": 0, "most": 0, "rated": 0}
    failures: list[BaseException] = []

    def work(worker: str) -> None:
        try:
            barrier.wait(30)
            for _ in range(60):
                params = JobClaimParams(worker, kit.now(), 2, 600.0)
                jobs = kit.store.job_claim(params).jobs
                with lock:
                    state["running"] += sum(1 for job in jobs if job.queue == "q")
                    state["rated"] += sum(1 for job in jobs if job.queue == "r")
                    state["most"] = max(state["most"], state["running"])
                for job in jobs:
                    if job.queue == "q":
                        with lock:
                            state["running"] -= 1
                    finish = JobFinish(job.id, job.fence, kit.now(), JobState.SUCCEEDED)
                    assert kit.store.job_finish(finish)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    assert 1 <= state["most"] <= 3
    assert state["rated"] == 7


# dead letters and retention --------------------------------------------------------------------


def failed_job(kit: Kit, **fields: Any) -> int:
    job = kit.store.job_insert(JobInsert(task=fields.pop("task", "t"), **fields), kit.now()).job
    claimed = kit.store.job_claim(
        JobClaimParams("w", kit.now(), 1, 30.0, (job.queue,))).jobs[0]
    assert kit.finish(claimed, JobState.FAILED, error=kit.error(claimed))
    return job.id


def test_dead_letters_come_back_in_batches_with_their_history(kit: Kit) -> None:
    ours = [failed_job(kit, queue="q", task="a") for _ in range(5)]
    other_task = failed_job(kit, queue="q", task="b")
    other_queue = failed_job(kit, queue="p", task="a")
    first = kit.store.job_retry_failed(RetryFailed(kit.now(), "q", "a", limit=3))
    assert [job.id for job in first.retried] == ours[:3] and first.last_id == ours[2]
    rest = kit.store.job_retry_failed(RetryFailed(kit.now(), "q", "a", after_id=ours[2]))
    assert [job.id for job in rest.retried] == ours[3:]
    done = kit.store.job_retry_failed(RetryFailed(kit.now(), "q", "a", after_id=ours[-1]))
    assert done.retried == [] and done.last_id is None
    back = kit.get(ours[0])
    assert back.state == JobState.AVAILABLE and back.max_attempts == 2 and len(back.errors) == 1
    assert kit.get(other_task).state == kit.get(other_queue).state == JobState.FAILED


def test_retrying_dead_letters_skips_jobs_whose_unique_key_is_taken(kit: Kit) -> None:
    blocked = failed_job(kit, queue="q", unique_key="k")
    kit.insert(queue="hold", unique_key="k")
    free = failed_job(kit, queue="q")
    result = kit.store.job_retry_failed(RetryFailed(kit.now(), "q"))
    assert [job.id for job in result.retried] == [free] and result.conflicts == [blocked]
    assert kit.get(blocked).state == JobState.FAILED


def test_retrying_a_failed_slot_job_reopens_its_ledger_row(kit: Kit) -> None:
    kit.slot("s", kit.now())
    job = kit.claim_one()
    assert kit.finish(job, JobState.FAILED, error=kit.error(job))
    result = kit.store.job_retry_failed(RetryFailed(kit.now()))
    assert [j.id for j in result.retried] == [job.id]
    assert kit.store.ledger_list("s")[0].outcome == SlotOutcome.ENQUEUED


def test_retention_cutoffs_per_queue_and_state(kit: Kit) -> None:
    for queue in ("a", "b"):
        for _ in range(4):
            kit.insert(queue=queue)
            job = kit.claim_one(queues=(queue,))
            assert kit.finish(job)
            kit.clock.advance(10)
    failed_job(kit, queue="c")
    assert kit.store.job_finished_queues() == ["a", "b", "c"]
    done = kit.store.job_list(JobFilter(queue="a", state=JobState.SUCCEEDED))
    newest_first = sorted((job.finished_at for job in done), reverse=True)
    assert kit.store.job_finished_cutoff("a", JobState.SUCCEEDED, 3) == newest_first[2]
    assert kit.store.job_finished_cutoff("a", JobState.SUCCEEDED, 5) is None
    assert kit.store.job_finished_cutoff("a", JobState.FAILED, 1) is None
    params = PruneParams(JobState.SUCCEEDED, finished_before=newest_first[2], queue="a", limit=1)
    assert [kit.store.job_prune(params) for _ in range(2)] == [1, 0]
    assert len(kit.store.job_list(JobFilter(queue="a"))) == 3
    assert len(kit.store.job_list(JobFilter(queue="b"))) == 4
