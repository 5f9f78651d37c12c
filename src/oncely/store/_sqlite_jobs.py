"""Job operations of the SQLite store outside the claim/finish cycle: insert, read, cancel, retry,
rescue listing, checkpoints, fence checks and pruning.

Each function runs on a connection the caller has put in the right transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from oncely import lifecycle
from oncely.errors import ConfigError, NotFound, StoreError
from oncely.store.base import JobFilter, JobInsert, JobInsertResult, PruneParams, QueueCount
from oncely.store.rows import (
    as_datetime,
    as_required_datetime,
    dump_error,
    dump_json,
    job_from_row,
    to_epoch,
    to_epoch_or_none,
)
from oncely.store.sqlfiles import load_queries
from oncely.types import FINISHED_STATES, ErrorKind, Job, JobError, JobState, Overlap, SlotOutcome

Q = load_queries("sqlite")


def fetch_one(conn: sqlite3.Connection, query: str, params: dict[str, Any]) -> sqlite3.Row | None:
    # fetchall: a half-read RETURNING statement would stay open and block COMMIT.
    rows = conn.execute(Q[query], params).fetchall()
    return rows[0] if rows else None


def to_job(row: sqlite3.Row) -> Job:
    return job_from_row(row, json_text=True)


def insert_job(
    conn: sqlite3.Connection,
    params: JobInsert,
    now: datetime,
    schedule: str | None = None,
    slot: datetime | None = None,
) -> JobInsertResult:
    """Insert one job, or return the unfinished job that already holds its unique key."""
    now_ts = to_epoch(now)
    run_at = now_ts if params.run_at is None else to_epoch(params.run_at)
    values = {
        "queue": params.queue,
        "task": params.task,
        "args": dump_json(params.args, f"arguments of task {params.task!r}"),
        "state": JobState.SCHEDULED if run_at > now_ts else JobState.AVAILABLE,
        "priority": params.priority,
        "max_attempts": params.max_attempts,
        "run_at": run_at,
        "created_at": now_ts,
        "unique_key": params.unique_key,
        "schedule": schedule,
        "slot": to_epoch_or_none(slot),
        "singleton_key": params.singleton_key,
        "overlap": str(params.overlap),
        "timeout": params.timeout,
        "concurrency_key": params.concurrency_key,
    }
    row = fetch_one(conn, "job_insert", values)
    if row is not None:
        return JobInsertResult(_inserted_job(int(row["id"]), params, values), created=True)
    existing = None
    if params.unique_key is not None:
        existing = fetch_one(
            conn, "job_get_unfinished_by_unique_key", {"unique_key": params.unique_key}
        )
    if existing is None and schedule is not None:
        existing = fetch_one(
            conn, "job_get_by_slot", {"schedule": schedule, "slot": values["slot"]}
        )
    if existing is None:
        raise StoreError(f"inserting a job of task {params.task!r} conflicted with no visible job")
    return JobInsertResult(to_job(existing), created=False)


def _inserted_job(job_id: int, params: JobInsert, values: dict[str, Any]) -> Job:
    # Built from what was written rather than read back: bulk enqueues stay cheap.
    return Job(
        id=job_id,
        queue=params.queue,
        task=params.task,
        args=dict(params.args),
        state=values["state"],
        priority=params.priority,
        attempt=0,
        max_attempts=params.max_attempts,
        run_at=as_required_datetime(values["run_at"]),
        created_at=as_required_datetime(values["created_at"]),
        unique_key=params.unique_key,
        schedule=values["schedule"],
        slot=as_datetime(values["slot"]),
        singleton_key=params.singleton_key,
        overlap=Overlap(params.overlap),
        timeout=params.timeout,
        concurrency_key=params.concurrency_key,
    )


def insert_jobs(
    conn: sqlite3.Connection, params: Sequence[JobInsert], now: datetime
) -> list[JobInsertResult]:
    return [insert_job(conn, item, now) for item in params]


def get_job(conn: sqlite3.Connection, job_id: int) -> Job | None:
    row = fetch_one(conn, "job_get", {"id": job_id})
    return None if row is None else to_job(row)


def require_job(conn: sqlite3.Connection, job_id: int) -> Job:
    job = get_job(conn, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def list_jobs(conn: sqlite3.Connection, flt: JobFilter) -> list[Job]:
    params = {
        "state": None if flt.state is None else str(flt.state),
        "queue": flt.queue,
        "task": flt.task,
        "schedule": flt.schedule,
        "before_id": flt.before_id,
        "limit": flt.limit,
    }
    return [to_job(row) for row in conn.execute(Q["job_list"], params).fetchall()]


def count_jobs(conn: sqlite3.Connection) -> list[QueueCount]:
    return [
        QueueCount(queue=row["queue"], state=JobState(row["state"]), count=int(row["count"]))
        for row in conn.execute(Q["job_counts"]).fetchall()
    ]


def set_slot_outcome(
    conn: sqlite3.Connection,
    job: Job,
    outcome: SlotOutcome,
    note: str | None,
    now: float,
) -> None:
    """Record ``outcome`` on the ledger row of the slot ``job`` was enqueued for, if any."""
    if job.schedule is None or job.slot is None:
        return
    set_ledger_outcome(conn, job.schedule, to_epoch(job.slot), job.id, outcome, note, now)


def set_ledger_outcome(
    conn: sqlite3.Connection,
    schedule: str,
    slot: float,
    job_id: int,
    outcome: SlotOutcome,
    note: str | None,
    now: float,
) -> None:
    values = {
        "schedule": schedule,
        "slot": slot,
        "job_id": job_id,
        "outcome": str(outcome),
        "note": note,
        "now": now,
    }
    conn.execute(Q["slot_set_outcome"], values)


def cancel_job(conn: sqlite3.Connection, job_id: int, now: datetime, reason: str) -> Job:
    """End a waiting job now; flag a running one so its worker stops it."""
    job = require_job(conn, job_id)
    now_ts = to_epoch(now)
    if job.state == JobState.RUNNING:
        row = fetch_one(conn, "job_request_cancel", {"id": job_id})
        return job if row is None else to_job(row)
    if job.state.finished:
        return job
    error = JobError(attempt=job.attempt, at=now, kind=ErrorKind.CANCELLED, message=reason)
    row = fetch_one(
        conn, "job_cancel_waiting", {"id": job_id, "now": now_ts, "error": dump_error(error)}
    )
    if row is None:
        return job
    cancelled = to_job(row)
    set_slot_outcome(conn, cancelled, SlotOutcome.FAILED, lifecycle.cancelled_note(reason), now_ts)
    return cancelled


def retry_job(conn: sqlite3.Connection, job_id: int, now: datetime) -> Job:
    """Make a failed, cancelled, retryable or scheduled job available now (a human's retry)."""
    job = require_job(conn, job_id)
    if job.state == JobState.AVAILABLE:
        return job
    if job.state in (JobState.RUNNING, JobState.SUCCEEDED):
        raise ConfigError(lifecycle.retry_refusal(job_id, job.state))
    now_ts = to_epoch(now)
    try:
        row = fetch_one(conn, "job_retry", {"id": job_id, "now": now_ts})
    except sqlite3.IntegrityError:
        raise ConfigError(
            f"job {job_id} cannot be retried: another unfinished job holds its unique key "
            f"{job.unique_key!r}"
        ) from None
    if row is None:
        return job
    retried = to_job(row)
    if job.state in FINISHED_STATES:
        set_slot_outcome(conn, retried, SlotOutcome.ENQUEUED, lifecycle.RETRIED_BY_HAND, now_ts)
    return retried


def expired_jobs(conn: sqlite3.Connection, now: datetime, limit: int) -> list[Job]:
    rows = conn.execute(Q["job_expired"], {"now": to_epoch(now), "limit": limit}).fetchall()
    return [to_job(row) for row in rows]


def fence_live(conn: sqlite3.Connection, job_id: int, fence: int, now: datetime) -> bool:
    params = {"job_id": job_id, "fence": fence, "now": to_epoch(now)}
    return fetch_one(conn, "job_fence_live", params) is not None


def checkpoint_job(
    conn: sqlite3.Connection, job_id: int, fence: int, data: Any, now: datetime
) -> bool:
    params = {
        "job_id": job_id,
        "fence": fence,
        "now": to_epoch(now),
        "checkpoint": dump_json(data, f"checkpoint of job {job_id}"),
    }
    return conn.execute(Q["job_checkpoint"], params).rowcount > 0


def prune_jobs(conn: sqlite3.Connection, params: PruneParams) -> int:
    if params.state not in FINISHED_STATES:
        raise ValueError(f"only finished jobs can be pruned, not {params.state!r}")
    if params.queue is not None and params.finished_before is not None and not params.keep_last:
        # The pruner's case: one queue, by age, along the retention index.
        values = {
            "queue": params.queue,
            "state": str(params.state),
            "finished_before": to_epoch(params.finished_before),
            "limit": params.limit,
        }
        return conn.execute(Q["job_prune_queue"], values).rowcount
    values = {
        "state": str(params.state),
        "queue": params.queue,
        "finished_before": to_epoch_or_none(params.finished_before),
        "keep_last": max(0, params.keep_last or 0),
        "limit": params.limit,
    }
    return conn.execute(Q["job_prune"], values).rowcount

