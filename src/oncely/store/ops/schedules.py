"""Schedules, the slot ledger, the worker registry and the lease listing, written once for every
dialect. Each function takes the store's dialect and a connection the caller has put in a
transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from oncely import lifecycle
from oncely.errors import StoreError
from oncely.store.base import (
    LeaseRow,
    ScheduleRow,
    ScheduleUpsert,
    SlotEnqueue,
    SlotRecord,
    SlotResult,
    UpsertOutcome,
    WorkerInfo,
    WorkerRow,
)
from oncely.store.dialect import Dialect
from oncely.store.ops.jobs import insert_job
from oncely.store.rows import (
    dump_json,
    lease_from_row,
    schedule_from_row,
    slot_from_row,
    worker_from_row,
)
from oncely.types import SlotOutcome


def upsert_schedule(d: Dialect, conn: Any, params: ScheduleUpsert) -> UpsertOutcome:
    """Idempotent registration by name; every call records that a worker declared it."""
    values = {
        "name": params.name,
        "task": params.task,
        "spec": dump_json(params.spec, f"schedule {params.name!r}"),
        "spec_hash": params.spec_hash,
        "now": d.instant(params.now),
    }
    current = d.fetch_one(conn, "schedule_get_for_update", {"name": params.name})
    if current is None:
        if d.fetch_one(conn, "schedule_insert", values) is not None:
            return UpsertOutcome.CREATED
        # A concurrent registration inserted it first (and has committed by now).
        current = d.fetch_one(conn, "schedule_get_for_update", {"name": params.name})
        if current is None:
            raise StoreError(f"schedule {params.name!r} vanished while it was being registered")
    if current["spec_hash"] != params.spec_hash or current["task"] != params.task:
        d.execute(conn, "schedule_update", values)
        return UpsertOutcome.UPDATED
    d.execute(conn, "schedule_declare", values)
    return UpsertOutcome.UNCHANGED


def list_schedules(d: Dialect, conn: Any) -> list[ScheduleRow]:
    rows = d.fetch(conn, "schedule_list")
    return [schedule_from_row(row, json_text=d.json_text) for row in rows]


def get_schedule(d: Dialect, conn: Any, name: str) -> ScheduleRow | None:
    row = d.fetch_one(conn, "schedule_get", {"name": name})
    return None if row is None else schedule_from_row(row, json_text=d.json_text)


def advance_schedule(
    d: Dialect, conn: Any, name: str, expected_cursor: datetime | None, new_cursor: datetime
) -> bool:
    values = {
        "name": name,
        "expected_cursor": d.instant_or_none(expected_cursor),
        "new_cursor": d.instant(new_cursor),
    }
    return d.execute(conn, "schedule_advance", values) > 0


def delete_schedule(d: Dialect, conn: Any, name: str) -> bool:
    return d.execute(conn, "schedule_delete", {"name": name}) > 0


def enqueue_slot(d: Dialect, conn: Any, params: SlotEnqueue) -> SlotResult:
    """Record a slot at most once; with a job, insert that job in the same transaction.

    The ledger row goes first: of two enqueuers racing for one slot, the second waits on the
    first's uncommitted row (PostgreSQL) or for the write lock (SQLite) and then inserts
    nothing, so it never reaches the job insert."""
    now = d.instant(params.now)
    key: dict[str, Any] = {"schedule": params.schedule, "slot": d.instant(params.slot)}
    outcome = SlotOutcome.ENQUEUED if params.job is not None else params.outcome
    values = {**key, "outcome": str(outcome), "note": params.note, "now": now}
    if d.fetch_one(conn, "slot_insert", values) is None:
        existing = d.fetch_one(conn, "slot_get", key)
        job_id = None if existing is None else existing["job_id"]
        return SlotResult(created=False, job_id=job_id)
    if params.job is None:
        return SlotResult(created=True, job_id=None)
    result = insert_job(d, conn, params.job, params.now, params.schedule, params.slot)
    if result.created:
        link = {"job_id": result.job.id, "outcome": str(outcome), "note": params.note}
        d.execute(conn, "slot_link_job", {**key, **link, "now": now})
        return SlotResult(created=True, job_id=result.job.id)
    # The job's unique key is taken by an unfinished job: this slot merges into that run.
    note = lifecycle.coalesced_note(result.job.id, params.job.unique_key)
    link = {"job_id": None, "outcome": str(SlotOutcome.COALESCED), "note": note}
    d.execute(conn, "slot_link_job", {**key, **link, "now": now})
    return SlotResult(created=True, job_id=None)


def list_ledger(
    d: Dialect, conn: Any, schedule: str, limit: int, before: datetime | None
) -> list[SlotRecord]:
    values = {"schedule": schedule, "limit": limit, "before": d.instant_or_none(before)}
    return [slot_from_row(row) for row in d.fetch(conn, "ledger_list", values)]


# workers and leases -----------------------------------------------------------------------------


def register_worker(d: Dialect, conn: Any, info: WorkerInfo) -> None:
    values = {
        "worker_id": info.worker_id,
        "hostname": info.hostname,
        "pid": info.pid,
        "queues": None if info.queues is None else d.array(list(info.queues)),
        "concurrency": info.concurrency,
        "started_at": d.instant(info.started_at),
        "tasks": None if info.tasks is None else d.array(list(info.tasks)),
        "clock_offset": info.clock_offset,
    }
    d.execute(conn, "worker_register", values)


def heartbeat_worker(
    d: Dialect, conn: Any, worker_id: str, now: datetime, clock_offset: float | None = None
) -> None:
    values = {"worker_id": worker_id, "now": d.instant(now), "clock_offset": clock_offset}
    d.execute(conn, "worker_heartbeat", values)


def deregister_worker(d: Dialect, conn: Any, worker_id: str) -> None:
    d.execute(conn, "worker_deregister", {"worker_id": worker_id})


def list_workers(d: Dialect, conn: Any) -> list[WorkerRow]:
    rows = d.fetch(conn, "worker_list")
    return [worker_from_row(row, json_text=d.json_text) for row in rows]


def list_leases(d: Dialect, conn: Any) -> list[LeaseRow]:
    return [lease_from_row(row) for row in d.fetch(conn, "lease_list")]
