"""Schedules, the slot ledger and the worker registry of the SQLite store.

Each function runs on a connection the caller has put in the right transaction.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from oncely import lifecycle
from oncely.store._sqlite_jobs import Q, fetch_one, insert_job
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
from oncely.store.rows import (
    dump_json,
    schedule_from_row,
    slot_from_row,
    to_epoch,
    to_epoch_or_none,
    worker_from_row,
)
from oncely.types import SlotOutcome


def upsert_schedule(conn: sqlite3.Connection, params: ScheduleUpsert) -> UpsertOutcome:
    """Idempotent registration by name; every call records that a worker declared it."""
    values = {
        "name": params.name,
        "task": params.task,
        "spec": dump_json(params.spec, f"schedule {params.name!r}"),
        "spec_hash": params.spec_hash,
        "now": to_epoch(params.now),
    }
    current = fetch_one(conn, "schedule_get", {"name": params.name})
    if current is None:
        conn.execute(Q["schedule_insert"], values)
        return UpsertOutcome.CREATED
    if current["spec_hash"] != params.spec_hash or current["task"] != params.task:
        conn.execute(Q["schedule_update"], values)
        return UpsertOutcome.UPDATED
    conn.execute(Q["schedule_declared"], values)
    return UpsertOutcome.UNCHANGED


def list_schedules(conn: sqlite3.Connection) -> list[ScheduleRow]:
    rows = conn.execute(Q["schedule_list"]).fetchall()
    return [schedule_from_row(row, json_text=True) for row in rows]


def get_schedule(conn: sqlite3.Connection, name: str) -> ScheduleRow | None:
    row = fetch_one(conn, "schedule_get", {"name": name})
    return None if row is None else schedule_from_row(row, json_text=True)


def advance_schedule(
    conn: sqlite3.Connection, name: str, expected_cursor: datetime | None, new_cursor: datetime
) -> bool:
    values = {
        "name": name,
        "expected_cursor": to_epoch_or_none(expected_cursor),
        "new_cursor": to_epoch(new_cursor),
    }
    return conn.execute(Q["schedule_advance"], values).rowcount > 0


def delete_schedule(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute(Q["schedule_delete"], {"name": name}).rowcount > 0


def enqueue_slot(conn: sqlite3.Connection, params: SlotEnqueue) -> SlotResult:
    """Record a slot at most once; with a job, insert that job in the same transaction."""
    now = to_epoch(params.now)
    slot = to_epoch(params.slot)
    key = {"schedule": params.schedule, "slot": slot}
    outcome = SlotOutcome.ENQUEUED if params.job is not None else params.outcome
    inserted = conn.execute(
        Q["slot_insert"], {**key, "outcome": str(outcome), "note": params.note, "now": now}
    ).rowcount
    if not inserted:
        existing = fetch_one(conn, "slot_get", key)
        job_id = None if existing is None else existing["job_id"]
        return SlotResult(created=False, job_id=job_id)
    if params.job is None:
        return SlotResult(created=True, job_id=None)
    result = insert_job(conn, params.job, params.now, schedule=params.schedule, slot=params.slot)
    if result.created:
        link = {"job_id": result.job.id, "outcome": str(outcome), "note": params.note}
        conn.execute(Q["slot_link_job"], {**key, **link, "now": now})
        return SlotResult(created=True, job_id=result.job.id)
    # The job's unique key is taken by an unfinished job: this slot merges into that run.
    note = lifecycle.coalesced_note(result.job.id, params.job.unique_key)
    link = {"job_id": None, "outcome": str(SlotOutcome.COALESCED), "note": note}
    conn.execute(Q["slot_link_job"], {**key, **link, "now": now})
    return SlotResult(created=True, job_id=None)


def list_ledger(
    conn: sqlite3.Connection, schedule: str, limit: int, before: datetime | None
) -> list[SlotRecord]:
    values = {"schedule": schedule, "limit": limit, "before": to_epoch_or_none(before)}
    return [slot_from_row(row) for row in conn.execute(Q["ledger_list"], values).fetchall()]


def register_worker(conn: sqlite3.Connection, info: WorkerInfo) -> None:
    values = {
        "worker_id": info.worker_id,
        "hostname": info.hostname,
        "pid": info.pid,
        "queues": None if info.queues is None else dump_json(list(info.queues), "queues"),
        "concurrency": info.concurrency,
        "started_at": to_epoch(info.started_at),
    }
    conn.execute(Q["worker_register"], values)


def heartbeat_worker(conn: sqlite3.Connection, worker_id: str, now: datetime) -> None:
    conn.execute(Q["worker_heartbeat"], {"worker_id": worker_id, "now": to_epoch(now)})


def deregister_worker(conn: sqlite3.Connection, worker_id: str) -> None:
    conn.execute(Q["worker_deregister"], {"worker_id": worker_id})


def list_workers(conn: sqlite3.Connection) -> list[WorkerRow]:
    rows = conn.execute(Q["worker_list"]).fetchall()
    return [worker_from_row(row, json_text=True) for row in rows]
