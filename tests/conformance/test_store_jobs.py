"""Conformance: inserting, reading and listing jobs; unique keys; caller transactions."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING

import pytest

from oncely.errors import ArgsNotJSON
from oncely.store.params import JobFilter, JobInsert, QueueCount
from oncely.types import JobState, Overlap

if TYPE_CHECKING:
    from conftest import Kit


def test_insert_due_job_is_available_and_reads_back_equal(kit: Kit) -> None:
    result = kit.store.job_insert(
        JobInsert(task="send", args={"to": "a@b.c", "n": [1, 2]}), kit.now()
    )
    job = result.job
    assert result.created
    assert job.state == JobState.AVAILABLE
    assert (job.attempt, job.fence, job.max_attempts, job.priority) == (0, 0, 1, 0)
    assert job.run_at == kit.now() and job.created_at == kit.now()
    assert job.run_at.tzinfo is not None and job.run_at.utcoffset() == UTC.utcoffset(None)
    assert job.args == {"to": "a@b.c", "n": [1, 2]}
    assert job.errors == () and job.result is None and job.checkpoint is None
    assert kit.store.job_get(job.id) == job


def test_insert_keeps_every_field(kit: Kit) -> None:
    params = JobInsert(
        task="report",
        queue="billing",
        args={"org": 7},
        priority=5,
        run_at=kit.later(0),
        max_attempts=4,
        unique_key="report-7",
        singleton_key="report",
        overlap=Overlap.BUFFER_ONE,
        timeout=12.5,
    )
    job = kit.store.job_insert(params, kit.now()).job
    stored = kit.get(job.id)
    assert stored == job
    assert (stored.queue, stored.task, stored.priority, stored.max_attempts) == (
        "billing",
        "report",
        5,
        4,
    )
    assert (stored.unique_key, stored.singleton_key, stored.overlap, stored.timeout) == (
        "report-7",
        "report",
        Overlap.BUFFER_ONE,
        12.5,
    )
    assert stored.schedule is None and stored.slot is None


def test_future_job_is_scheduled_until_due(kit: Kit) -> None:
    job = kit.insert(run_at=kit.later(60))
    assert job.state == JobState.SCHEDULED
    assert kit.claim().jobs == []
    kit.clock.advance(59)
    assert kit.claim().jobs == []
    kit.clock.advance(1)
    assert [claimed.id for claimed in kit.claim().jobs] == [job.id]


def test_past_run_at_is_available(kit: Kit) -> None:
    job = kit.store.job_insert(JobInsert(task="t", run_at=kit.later(-30)), kit.now()).job
    assert job.state == JobState.AVAILABLE
    assert job.run_at == kit.later(-30)


def test_args_that_are_not_json_are_refused(kit: Kit) -> None:
    with pytest.raises(ArgsNotJSON):
        kit.store.job_insert(JobInsert(task="t", args={"s": {1, 2}}), kit.now())
    assert kit.store.job_list(JobFilter()) == []


def test_unique_key_dedups_while_unfinished(kit: Kit) -> None:
    first = kit.store.job_insert(JobInsert(task="t", unique_key="k"), kit.now())
    again = kit.store.job_insert(JobInsert(task="t", unique_key="k", args={"x": 1}), kit.now())
    assert first.created and not again.created
    assert again.job.id == first.job.id and again.job.args == {}

    running = kit.claim_one()
    while_running = kit.store.job_insert(JobInsert(task="t", unique_key="k"), kit.now())
    assert not while_running.created and while_running.job.id == first.job.id

    assert kit.finish(running)
    after = kit.store.job_insert(JobInsert(task="t", unique_key="k"), kit.now())
    assert after.created and after.job.id != first.job.id


def test_unique_key_frees_after_failure_and_cancel(kit: Kit) -> None:
    kit.insert(unique_key="k")
    failed = kit.claim_one()
    assert kit.finish(failed, JobState.FAILED, error=kit.error(failed))
    waiting = kit.store.job_insert(JobInsert(task="t", unique_key="k"), kit.now())
    assert waiting.created
    kit.store.job_cancel(waiting.job.id, kit.now(), "not needed")
    assert kit.store.job_insert(JobInsert(task="t", unique_key="k"), kit.now()).created


def test_jobs_without_unique_key_never_dedup(kit: Kit) -> None:
    ids = {kit.insert().id for _ in range(3)}
    assert len(ids) == 3


def test_insert_many_keeps_order_and_dedups(kit: Kit) -> None:
    existing = kit.insert(unique_key="u1")
    params = [
        JobInsert(task="a", args={"i": 0}),
        JobInsert(task="b", unique_key="u1"),
        JobInsert(task="c", unique_key="u2", run_at=kit.later(10)),
        JobInsert(task="d", unique_key="u2"),
        JobInsert(task="e", queue="other", priority=3),
    ]
    results = kit.store.job_insert_many(params, kit.now())
    assert [r.created for r in results] == [True, False, True, False, True]
    assert results[1].job.id == existing.id
    assert results[3].job.id == results[2].job.id
    assert results[2].job.state == JobState.SCHEDULED
    created = [r.job.id for r in results if r.created]
    assert created == sorted(created)
    for result in results:
        assert kit.get(result.job.id) == result.job
    assert kit.store.job_insert_many([], kit.now()) == []


def test_insert_many_scales(kit: Kit) -> None:
    results = kit.store.job_insert_many(
        [JobInsert(task="bulk", args={"i": i}) for i in range(2000)], kit.now()
    )
    assert len({r.job.id for r in results}) == 2000
    assert [r.job.args["i"] for r in results] == list(range(2000))
    assert kit.store.job_counts() == [QueueCount("default", JobState.AVAILABLE, 2000)]


def test_insert_many_without_unique_keys_returns_the_jobs_as_stored(kit: Kit) -> None:
    """A batch no unique key can hold back (PostgreSQL writes it with COPY): every field the
    store reads back is the one the insert returned, in the batch's order."""
    params = [
        JobInsert(task="a", args={"n": 1, "text": "é\t\\x"}, priority=2, max_attempts=3,
                  timeout=1.5),
        JobInsert(task="b", queue="other", run_at=kit.later(60), singleton_key="s",
                  overlap=Overlap.BUFFER_ONE),
        JobInsert(task="c", concurrency_key="c/org:1", args={"nested": [1, {"x": None}]}),
    ]
    results = kit.store.job_insert_many(params, kit.now())
    assert all(r.created for r in results)
    assert [r.job.task for r in results] == ["a", "b", "c"]
    ids = [r.job.id for r in results]
    assert ids == sorted(ids)
    assert [r.job.state for r in results] == [JobState.AVAILABLE, JobState.SCHEDULED,
                                              JobState.AVAILABLE]
    for result in results:
        assert kit.get(result.job.id) == result.job


def test_insert_inside_caller_transaction_commits_with_it(kit: Kit) -> None:
    with kit.store.transaction() as conn:
        result = kit.store.job_insert(JobInsert(task="t"), kit.now(), conn=conn)
        assert result.created
    assert kit.get(result.job.id).state == JobState.AVAILABLE


def test_insert_inside_caller_transaction_rolls_back_with_it(kit: Kit) -> None:
    with pytest.raises(RuntimeError), kit.store.transaction() as conn:
        result = kit.store.job_insert(JobInsert(task="t"), kit.now(), conn=conn)
        raise RuntimeError("caller failed")
    assert kit.store.job_get(result.job.id) is None
    assert kit.store.job_list(JobFilter()) == []


def test_job_get_missing_is_none(kit: Kit) -> None:
    assert kit.store.job_get(987654) is None


def test_job_list_newest_first_with_filters_and_keyset(kit: Kit) -> None:
    a = kit.insert("alpha", queue="q1")
    b = kit.insert("beta", queue="q2")
    c = kit.insert("alpha", queue="q2")
    d = kit.insert("beta", queue="q1", run_at=kit.later(60))

    def ids(**fields: object) -> list[int]:
        return [job.id for job in kit.store.job_list(JobFilter(**fields))]

    assert ids() == [d.id, c.id, b.id, a.id]
    assert ids(queue="q1") == [d.id, a.id]
    assert ids(task="alpha") == [c.id, a.id]
    assert ids(state=JobState.SCHEDULED) == [d.id]
    assert ids(state=JobState.AVAILABLE, queue="q2") == [c.id, b.id]
    assert ids(limit=2) == [d.id, c.id]
    assert ids(limit=2, before_id=c.id) == [b.id, a.id]
    assert ids(before_id=a.id) == []


def test_job_list_by_schedule(kit: Kit) -> None:
    kit.insert()
    slot = kit.slot("nightly", kit.now())
    assert [job.id for job in kit.store.job_list(JobFilter(schedule="nightly"))] == [slot.job_id]


def test_job_counts_by_queue_and_state(kit: Kit) -> None:
    kit.insert(queue="a")
    kit.insert(queue="a")
    kit.insert(queue="b", run_at=kit.later(5))
    running = kit.claim_one(queues=("a",))
    assert kit.finish(running)
    counts = sorted(kit.store.job_counts(), key=lambda c: (c.queue, c.state))
    assert counts == [
        QueueCount("a", JobState.AVAILABLE, 1),
        QueueCount("a", JobState.SUCCEEDED, 1),
        QueueCount("b", JobState.SCHEDULED, 1),
    ]
