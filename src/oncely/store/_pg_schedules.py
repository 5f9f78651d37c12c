"""Schedules, the slot ledger and the worker registry of the PostgreSQL store.

Each function runs on a connection the caller has put in a transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from oncely import lifecycle
from oncely.errors import StoreError
from oncely.store._pg_jobs import execute, fetch, fetch_one, insert_job
from oncely.store.base import (
    ScheduleRow,
    ScheduleUpsert,
    SlotEnqueue,
    SlotRecord,
    SlotResult,
    UpsertOutcome,
    WorkerInfo,
    WorkerRow,
)
from oncely.store.rows import dump_json, schedule_from_row, slot_from_row, utc, worker_from_row
from oncely.types import SlotOutcome


def upsert_schedule(conn: psycopg.Connection[Any], params: ScheduleUpsert) -> UpsertOutcome:
    """Idempotent registration by name; every call records that a worker declared it."""
    values = {
        "name": params.name,
        "task": params.task,
        "spec": dump_json(params.spec, f"schedule {params.name!r}"),
        "spec_hash": params.spec_hash,
        "now": utc(params.now),
    }
    current = fetch_one(conn, "schedule_get_for_update", {"name": params.name})
    if current is None:
        if fetch_one(conn, "schedule_insert", values) is not None:
            return UpsertOutcome.CREATED
        # A concurrent registration inserted it first (and has committed by now).
        current = fetch_one(conn, "schedule_get_for_update", {"name": params.name})
        if current is None:
            raise StoreError(f"schedule {params.name!r} vanished while it was being registered")
    if current["spec_hash"] != params.spec_hash or current["task"] != params.task:
        execute(conn, "schedule_update", values)
        return UpsertOutcome.UPDATED
    execute(conn, "schedule_declared", values)
    return UpsertOutcome.UNCHANGED


def list_schedules(conn: psycopg.Connection[Any]) -> list[ScheduleRow]:
    return [schedule_from_row(row, json_text=False) for row in fetch(conn, "schedule_list")]


def get_schedule(conn: psycopg.Connection[Any], name: str) -> ScheduleRow | None:
    row = fetch_one(conn, "schedule_get", {"name": name})
    return None if row is None else schedule_from_row(row, json_text=False)


def advance_schedule(
    conn: psycopg.Connection[Any], name: str, expected_cursor: datetime | None, new_cursor: datetime
) -> bool:
    values = {
        "name": name,
        "expected_cursor": None if expected_cursor is None else utc(expected_cursor),
        "new_cursor": utc(new_cursor),
    }
    return execute(conn, "schedule_advance", values) > 0


def delete_schedule(conn: psycopg.Connection[Any], name: str) -> bool:
    return execute(conn, "schedule_delete", {"name": name}) > 0


def enqueue_slot(conn: psycopg.Connection[Any], params: SlotEnqueue) -> SlotResult:
    """Record a slot at most once; with a job, insert that job in the same transaction.

    The ledger row goes first: of two enqueuers racing for one slot, the second waits on the
    first's uncommitted row and then inserts nothing, so it never reaches the job insert."""
    now = utc(params.now)
    slot = utc(params.slot)
    key: dict[str, Any] = {"schedule": params.schedule, "slot": slot}
    outcome = SlotOutcome.ENQUEUED if params.job is not None else params.outcome
    inserted = fetch_one(
        conn, "slot_insert", {**key, "outcome": str(outcome), "note": params.note, "now": now}
    )
    if inserted is None:
        existing = fetch_one(conn, "slot_get", key)
        job_id = None if existing is None else existing["job_id"]
        return SlotResult(created=False, job_id=job_id)
    if params.job is None:
        return SlotResult(created=True, job_id=None)
    result = insert_job(conn, params.job, now, schedule=params.schedule, slot=slot)
    if result.created:
        link = {"job_id": result.job.id, "outcome": str(outcome), "note": params.note}
        execute(conn, "slot_link_job", {**key, **link, "now": now})
        return SlotResult(created=True, job_id=result.job.id)
    # The job's unique key is taken by an unfinished job: this slot merges into that run.
    note = lifecycle.coalesced_note(result.job.id, params.job.unique_key)
    link = {"job_id": None, "outcome": str(SlotOutcome.COALESCED), "note": note}
    execute(conn, "slot_link_job", {**key, **link, "now": now})
    return SlotResult(created=True, job_id=None)


def list_ledger(
    conn: psycopg.Connection[Any], schedule: str, limit: int, before: datetime | None
) -> list[SlotRecord]:
    values = {
        "schedule": schedule,
        "limit": limit,
        "before": None if before is None else utc(before),
    }
    return [slot_from_row(row) for row in fetch(conn, "ledger_list", values)]


def register_worker(conn: psycopg.Connection[Any], info: WorkerInfo) -> None:
    values = {
        "worker_id": info.worker_id,
        "hostname": info.hostname,
        "pid": info.pid,
        "queues": None if info.queues is None else list(info.queues),
        "concurrency": info.concurrency,
        "started_at": utc(info.started_at),
    }
    execute(conn, "worker_register", values)


def heartbeat_worker(conn: psycopg.Connection[Any], worker_id: str, now: datetime) -> None:
    execute(conn, "worker_heartbeat", {"worker_id": worker_id, "now": utc(now)})


def deregister_worker(conn: psycopg.Connection[Any], worker_id: str) -> None:
    execute(conn, "worker_deregister", {"worker_id": worker_id})


def list_workers(conn: psycopg.Connection[Any]) -> list[WorkerRow]:
    return [worker_from_row(row, json_text=False) for row in fetch(conn, "worker_list")]
