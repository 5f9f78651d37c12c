"""Schedules, the slot ledger, the worker registry and the lease listing, written once for every
dialect. Each function takes the store's dialect and a connection the caller has put in a
transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from oncely import lifecycle
from oncely.errors import StoreError
from oncely.store._observe_rows import event_from_row
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
from oncely.store.observability import FleetEvent
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
    """A declaration (or an operator's create/apply) against the stored definition, under the
    row's lock; the precedence rule is :mod:`oncely.maintenance.enqueuer`'s state machine."""
    values = {
        "name": params.name,
        "task": params.task,
        "spec": dump_json(params.spec, f"schedule {params.name!r}"),
        "spec_hash": params.spec_hash,
        "origin": params.origin,
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
    converting = params.force and params.origin == "declared"  # an operator's apply
    if current["origin"] != params.origin and not converting:
        return UpsertOutcome.REFUSED
    if current["spec_hash"] == params.spec_hash and current["origin"] == params.origin:
        if params.origin == "declared":
            d.execute(conn, "schedule_declare", values)
        return UpsertOutcome.UNCHANGED
    held = [h for h in (current["hashes"] or "").split(",") if h]
    if params.spec_hash in held and not params.force:
        return UpsertOutcome.SUPERSEDED  # an older definition never comes back by itself
    d.execute(conn, "schedule_revise", {**values, "hashes": ",".join([*held, params.spec_hash])})
    return UpsertOutcome.UPDATED


def pause_schedule(
    d: Dialect, conn: Any, name: str, paused_at: datetime | None, reason: str | None
) -> bool:
    values = {"name": name, "paused_at": d.instant_or_none(paused_at), "reason": reason}
    return d.execute(conn, "schedule_set_pause", values) > 0


def list_schedules(d: Dialect, conn: Any) -> list[ScheduleRow]:
    rows = d.fetch(conn, "schedule_list")
    return [schedule_from_row(row, json_text=d.json_text) for row in rows]


def get_schedule(d: Dialect, conn: Any, name: str) -> ScheduleRow | None:
    row = d.fetch_one(conn, "schedule_get", {"name": name})
    return None if row is None else schedule_from_row(row, json_text=d.json_text)


def advance_schedule(
    d: Dialect, conn: Any, name: str, expected_cursor: datetime | None, new_cursor: datetime,
    revision: int | None = None,
) -> bool:
    values: dict[str, Any] = {
        "name": name,
        "expected_cursor": d.instant_or_none(expected_cursor),
        "new_cursor": d.instant(new_cursor),
    }
    if revision is not None:
        return d.execute(conn, "schedule_advance_at_revision", {**values, "revision": revision}) > 0
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
    if params.revision is not None:
        guard = {"name": params.schedule, "revision": params.revision,
                 "expected_cursor": d.instant_or_none(params.expected_cursor),
                 "new_cursor": key["slot"]}
        if d.execute(conn, "schedule_advance_at_revision", guard) == 0:
            return SlotResult(created=False, job_id=None, stale=True)
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


def run_unrun_slot(d: Dialect, conn: Any, params: SlotEnqueue) -> SlotResult:
    """Resume's catch-up or a backfill: a slot recorded ``paused`` or ``missed`` gets its job
    after all (once)."""
    assert params.job is not None
    now = d.instant(params.now)
    key: dict[str, Any] = {"schedule": params.schedule, "slot": d.instant(params.slot)}
    if d.fetch_one(conn, "slot_claim_unrun", {**key, "note": params.note, "now": now}) is None:
        return SlotResult(created=False, job_id=None)
    result = insert_job(d, conn, params.job, params.now, params.schedule, params.slot)
    if not result.created:
        note = lifecycle.coalesced_note(result.job.id, params.job.unique_key)
        link: dict[str, Any] = {"job_id": None, "outcome": str(SlotOutcome.COALESCED),
                                "note": note}
        d.execute(conn, "slot_link_job", {**key, **link, "now": now})
        return SlotResult(created=True, job_id=None)
    link = {"job_id": result.job.id, "outcome": str(SlotOutcome.ENQUEUED), "note": params.note}
    d.execute(conn, "slot_link_job", {**key, **link, "now": now})
    return SlotResult(created=True, job_id=result.job.id)


def schedule_history(d: Dialect, conn: Any, name: str, limit: int) -> list[FleetEvent]:
    rows = d.fetch(conn, "schedule_history", {"subject": f"schedule:{name}", "limit": limit})
    return [event_from_row(row, json_text=d.json_text) for row in rows]


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


def declare_worker(d: Dialect, conn: Any, worker_id: str, declared: dict[str, str]) -> None:
    values = {"worker_id": worker_id, "declared": dump_json(declared, f"worker {worker_id}")}
    d.execute(conn, "worker_set_declared", values)


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
