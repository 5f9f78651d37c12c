"""Conformance: schedules, slots and the ledger, leader election, workers, pruning, schema."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from oncely.store.base import LEADER_LEASE_KEY
from oncely.store.params import (
    JobFilter,
    JobInsert,
    PruneParams,
    ScheduleUpsert,
    SlotEnqueue,
    UpsertOutcome,
    WorkerInfo,
)
from oncely.types import JobState, SlotOutcome

if TYPE_CHECKING:
    from conftest import Kit

SPEC = {"cron": "35 * * * *", "tz": "UTC", "overlap": "skip", "args": {"plan": "free"}}


# schedules -------------------------------------------------------------------------------------


def test_schedule_upsert_is_idempotent_by_spec_hash(kit: Kit) -> None:
    created_at = kit.now()
    upsert = kit.store.schedule_upsert
    assert upsert(ScheduleUpsert("hourly", "bill", SPEC, "h1", kit.now())) == UpsertOutcome.CREATED
    kit.clock.advance(5)
    assert (
        upsert(ScheduleUpsert("hourly", "bill", SPEC, "h1", kit.now())) == UpsertOutcome.UNCHANGED
    )
    row = kit.store.schedule_get("hourly")
    assert row is not None
    assert (row.name, row.task, row.spec, row.spec_hash, row.cursor) == (
        "hourly",
        "bill",
        SPEC,
        "h1",
        None,
    )
    assert (row.created_at, row.updated_at, row.declared_at) == (created_at, created_at, kit.now())

    kit.clock.advance(5)
    changed = {**SPEC, "cron": "0 * * * *"}
    assert (
        upsert(ScheduleUpsert("hourly", "bill", changed, "h2", kit.now())) == UpsertOutcome.UPDATED
    )
    row = kit.store.schedule_get("hourly")
    assert row is not None
    assert (row.spec, row.spec_hash) == (changed, "h2")
    assert (row.created_at, row.updated_at, row.declared_at) == (created_at, kit.now(), kit.now())


def test_schedule_list_get_delete(kit: Kit) -> None:
    for name in ("b-schedule", "a-schedule"):
        kit.store.schedule_upsert(ScheduleUpsert(name, "t", {}, "h", kit.now()))
    assert sorted(row.name for row in kit.store.schedule_list()) == ["a-schedule", "b-schedule"]
    assert kit.store.schedule_get("missing") is None
    assert kit.store.schedule_delete("a-schedule")
    assert not kit.store.schedule_delete("a-schedule")
    assert [row.name for row in kit.store.schedule_list()] == ["b-schedule"]


def test_schedule_advance_is_compare_and_set(kit: Kit) -> None:
    kit.store.schedule_upsert(ScheduleUpsert("s", "t", {}, "h", kit.now()))
    t1, t2 = kit.later(60), kit.later(120)
    assert kit.store.schedule_advance("s", None, t1)
    assert not kit.store.schedule_advance("s", None, t2)
    assert not kit.store.schedule_advance("s", t2, t2)
    assert kit.store.schedule_advance("s", t1, t2)
    row = kit.store.schedule_get("s")
    assert row is not None and row.cursor == t2
    assert not kit.store.schedule_advance("missing", None, t1)


def test_upsert_keeps_the_cursor(kit: Kit) -> None:
    kit.store.schedule_upsert(ScheduleUpsert("s", "t", {}, "h", kit.now()))
    assert kit.store.schedule_advance("s", None, kit.later(60))
    kit.store.schedule_upsert(ScheduleUpsert("s", "t", {"x": 1}, "h2", kit.now()))
    row = kit.store.schedule_get("s")
    assert row is not None and row.cursor == kit.later(60)


# slots and the ledger --------------------------------------------------------------------------


def test_slot_enqueue_makes_one_job_per_slot(kit: Kit) -> None:
    slot = kit.now()
    first = kit.slot("hourly", slot, key="hourly", queue="billing")
    again = kit.slot("hourly", slot, key="hourly", queue="billing")
    assert first.created and first.job_id is not None
    assert not again.created
    jobs = kit.store.job_list(JobFilter(schedule="hourly"))
    assert [job.id for job in jobs] == [first.job_id]
    job = jobs[0]
    assert (job.schedule, job.slot, job.queue, job.singleton_key) == (
        "hourly",
        slot,
        "billing",
        "hourly",
    )
    [record] = kit.store.ledger_list("hourly")
    assert (record.slot, record.outcome, record.job_id) == (slot, SlotOutcome.ENQUEUED, job.id)
    assert record.recorded_at == kit.now()


def test_slot_stays_taken_after_its_job_finished(kit: Kit) -> None:
    slot = kit.now()
    kit.slot("s", slot)
    assert kit.finish(kit.claim_one())
    kit.clock.advance(60)
    assert not kit.slot("s", slot).created
    assert len(kit.store.job_list(JobFilter(schedule="s"))) == 1


def test_slot_without_job_records_its_outcome(kit: Kit) -> None:
    slot = kit.later(-3600)
    missed = SlotEnqueue("s", slot, kit.now(), outcome=SlotOutcome.MISSED, note="worker down")
    result = kit.store.slot_enqueue(missed)
    assert result.created and result.job_id is None
    assert not kit.store.slot_enqueue(missed).created
    [record] = kit.store.ledger_list("s")
    assert (record.outcome, record.job_id, record.note) == (SlotOutcome.MISSED, None, "worker down")
    assert not kit.slot("s", slot).created
    assert kit.store.job_list(JobFilter()) == []


def test_future_slot_job_waits_for_its_time(kit: Kit) -> None:
    slot = kit.later(30)
    result = kit.slot("s", slot)
    assert kit.get(result.job_id or 0).state == JobState.SCHEDULED
    assert kit.claim().jobs == []
    kit.clock.advance(30)
    assert kit.claim_one().id == result.job_id


@pytest.mark.parametrize(
    ("end", "outcome"),
    [
        (JobState.SUCCEEDED, SlotOutcome.RAN),
        (JobState.FAILED, SlotOutcome.FAILED),
        (JobState.CANCELLED, SlotOutcome.FAILED),
        (JobState.RETRYABLE, SlotOutcome.ENQUEUED),
    ],
)
def test_ledger_follows_the_job_outcome(kit: Kit, end: JobState, outcome: SlotOutcome) -> None:
    kit.slot("s", kit.now(), max_attempts=3)
    job = kit.claim_one()
    kit.clock.advance(7)
    error = None if end == JobState.SUCCEEDED else kit.error(job, message="why")
    assert kit.finish(job, end, error=error, retry_at=kit.later(60))
    [record] = kit.store.ledger_list("s")
    assert record.outcome == outcome
    if end != JobState.RETRYABLE:
        assert record.updated_at == kit.now()
    if end == JobState.CANCELLED:
        assert record.note and "cancel" in record.note


def test_cancelling_a_waiting_slot_job_fails_its_slot_with_a_note(kit: Kit) -> None:
    result = kit.slot("s", kit.later(60))
    kit.store.job_cancel(result.job_id or 0, kit.now(), "holiday")
    [record] = kit.store.ledger_list("s")
    assert record.outcome == SlotOutcome.FAILED
    assert record.note and "holiday" in record.note


def test_ledger_list_newest_first_with_limit_and_before(kit: Kit) -> None:
    slots = [kit.now() + timedelta(hours=h) for h in range(5)]
    for slot in slots:
        kit.store.slot_enqueue(SlotEnqueue("s", slot, kit.now(), outcome=SlotOutcome.MISSED))
    kit.store.slot_enqueue(SlotEnqueue("other", slots[0], kit.now(), outcome=SlotOutcome.MISSED))
    assert [r.slot for r in kit.store.ledger_list("s")] == slots[::-1]
    assert [r.slot for r in kit.store.ledger_list("s", limit=2)] == [slots[4], slots[3]]
    assert [r.slot for r in kit.store.ledger_list("s", limit=2, before=slots[3])] == [
        slots[2],
        slots[1],
    ]
    assert kit.store.ledger_list("nothing") == []


# leader ----------------------------------------------------------------------------------------


def test_leader_election_renewal_takeover_and_resign(kit: Kit) -> None:
    first = kit.store.leader_elect("w1", kit.now(), 15)
    assert first.is_leader and first.leader_id == "w1" and first.expires_at == kit.later(15)
    term = first.term

    refused = kit.store.leader_elect("w2", kit.now(), 15)
    assert not refused.is_leader and refused.leader_id == "w1" and refused.term == term

    kit.clock.advance(10)
    renewed = kit.store.leader_elect("w1", kit.now(), 15)
    assert renewed.is_leader and renewed.term == term and renewed.expires_at == kit.later(15)

    kit.clock.advance(14)
    assert not kit.store.leader_elect("w2", kit.now(), 15).is_leader
    kit.clock.advance(1)
    taken = kit.store.leader_elect("w2", kit.now(), 15)
    assert taken.is_leader and taken.leader_id == "w2" and taken.term == term + 1
    assert not kit.store.leader_elect("w1", kit.now(), 15).is_leader

    kit.store.leader_resign("w1", kit.now())  # not the leader: changes nothing
    assert not kit.store.leader_elect("w1", kit.now(), 15).is_leader
    kit.store.leader_resign("w2", kit.now())
    after = kit.store.leader_elect("w1", kit.now(), 15)
    assert after.is_leader and after.term == term + 2

    [row] = [row for row in kit.store.lease_list() if row.key == LEADER_LEASE_KEY]
    assert (row.owner, row.fence, row.expires_at) == ("w1", term + 2, kit.later(15))


# workers ---------------------------------------------------------------------------------------


def test_worker_registry(kit: Kit) -> None:
    started = kit.now()
    kit.store.worker_register(WorkerInfo("w1", "host-a", 101, ("a", "b"), 4, started))
    kit.store.worker_register(WorkerInfo("w2", "host-b", 202, None, 8, started))
    rows = {row.worker_id: row for row in kit.store.worker_list()}
    assert rows["w1"].queues == ("a", "b") and rows["w1"].concurrency == 4
    assert rows["w2"].queues is None and rows["w2"].pid == 202
    assert rows["w1"].last_seen_at == started

    kit.clock.advance(30)
    kit.store.worker_heartbeat("w1", kit.now())
    kit.store.worker_heartbeat("unknown", kit.now())
    rows = {row.worker_id: row for row in kit.store.worker_list()}
    assert rows["w1"].last_seen_at == kit.now() and rows["w2"].last_seen_at == started

    kit.store.worker_register(WorkerInfo("w2", "host-c", 303, ("c",), 2, kit.now()))
    rows = {row.worker_id: row for row in kit.store.worker_list()}
    assert (rows["w2"].hostname, rows["w2"].pid, rows["w2"].queues) == ("host-c", 303, ("c",))
    assert rows["w2"].started_at == kit.now()

    kit.store.worker_deregister("w1")
    kit.store.worker_deregister("w1")
    assert [row.worker_id for row in kit.store.worker_list()] == ["w2"]


# pruning ---------------------------------------------------------------------------------------


def finished_jobs(kit: Kit, count: int, state: JobState, queue: str = "default") -> list[int]:
    ids = []
    for _ in range(count):
        kit.store.job_insert(JobInsert(task="t", queue=queue), kit.now())
        job = kit.claim_one(queues=(queue,))
        if state == JobState.CANCELLED:
            kit.store.job_cancel(job.id, kit.now(), "x")
        assert kit.finish(job, state)
        ids.append(job.id)
        kit.clock.advance(60)
    return ids


def remaining(kit: Kit, state: JobState) -> list[int]:
    return sorted(job.id for job in kit.store.job_list(JobFilter(state=state, limit=1000)))


def test_prune_by_age(kit: Kit) -> None:
    ids = finished_jobs(kit, 5, JobState.SUCCEEDED)
    failed = finished_jobs(kit, 2, JobState.FAILED)
    cutoff = kit.get(ids[2]).finished_at
    pruned = kit.store.job_prune(PruneParams(JobState.SUCCEEDED, finished_before=cutoff))
    assert pruned == 2
    assert remaining(kit, JobState.SUCCEEDED) == ids[2:]
    assert remaining(kit, JobState.FAILED) == failed


def test_prune_keeps_the_newest(kit: Kit) -> None:
    ids = finished_jobs(kit, 6, JobState.SUCCEEDED)
    kit.insert()
    kit.claim_one()
    assert kit.store.job_prune(PruneParams(JobState.SUCCEEDED, keep_last=2)) == 4
    assert remaining(kit, JobState.SUCCEEDED) == ids[-2:]
    assert len(kit.store.job_list(JobFilter(state=JobState.RUNNING))) == 1
    assert kit.store.job_prune(PruneParams(JobState.SUCCEEDED, keep_last=2)) == 0


def test_prune_keep_last_wins_over_age_and_queue_filters(kit: Kit) -> None:
    a = finished_jobs(kit, 4, JobState.CANCELLED, queue="a")
    b = finished_jobs(kit, 3, JobState.CANCELLED, queue="b")
    params = PruneParams(JobState.CANCELLED, finished_before=kit.now(), keep_last=1, queue="a")
    assert kit.store.job_prune(params) == 3
    assert remaining(kit, JobState.CANCELLED) == sorted([a[-1], *b])


def test_prune_works_in_batches(kit: Kit) -> None:
    finished_jobs(kit, 5, JobState.FAILED)
    params = PruneParams(JobState.FAILED, limit=2)
    assert [kit.store.job_prune(params) for _ in range(4)] == [2, 2, 1, 0]


def test_prune_leaves_the_ledger(kit: Kit) -> None:
    kit.slot("s", kit.now())
    assert kit.finish(kit.claim_one())
    assert kit.store.job_prune(PruneParams(JobState.SUCCEEDED)) == 1
    [record] = kit.store.ledger_list("s")
    assert record.outcome == SlotOutcome.RAN
    assert not kit.slot("s", record.slot).created


# schema ----------------------------------------------------------------------------------------


def test_schema_is_current_and_migrate_is_idempotent(kit: Kit) -> None:
    kit.store.check_schema()
    version = kit.store.schema_version()
    assert version >= 1
    again = kit.store.migrate()
    assert (again.from_version, again.to_version, again.applied) == (version, version, ())
    kit.store.check_schema()
