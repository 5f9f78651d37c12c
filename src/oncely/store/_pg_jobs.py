"""Job operations of the PostgreSQL store outside the claim/finish cycle: insert (one, many),
read, cancel, retry, rescue listing, fence checks, checkpoints and pruning.

Each function runs on a connection the caller has put in a transaction. JSON goes to the server
as text and is cast to ``jsonb`` in SQL, so :func:`oncely.store.rows.dump_json` validates it the
same way for both dialects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from oncely import lifecycle
from oncely.errors import ConfigError, NotFound, StoreError
from oncely.store._pg_engine import Q
from oncely.store.base import (
    JobFilter,
    JobInsert,
    JobInsertResult,
    PruneParams,
    QueueCount,
    iter_chunks,
)
from oncely.store.rows import dump_error, dump_json, job_from_row, utc
from oncely.types import FINISHED_STATES, ErrorKind, Job, JobError, JobState, Overlap, SlotOutcome

Row = dict[str, Any]
INSERT_CHUNK = 5000  # rows per INSERT statement of job_insert_many
_CONFLICT_RETRIES = 3


def fetch(
    conn: psycopg.Connection[Any], query: str, params: dict[str, Any] | None = None
) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(Q[query], params)
        return cur.fetchall()


def fetch_one(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> Row | None:
    rows = fetch(conn, query, params)
    return rows[0] if rows else None


def execute(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> int:
    with conn.cursor() as cur:
        cur.execute(Q[query], params)
        return cur.rowcount


def to_job(row: Row) -> Job:
    return job_from_row(row, json_text=False)


def errors_json(error: JobError | None) -> str:
    """The JSON array appended to a job's ``errors``: empty, or the one new error."""
    return "[]" if error is None else f"[{dump_error(error)}]"


# insert -----------------------------------------------------------------------------------------


def _insert_values(params: JobInsert, now: datetime) -> dict[str, Any]:
    run_at = now if params.run_at is None else utc(params.run_at)
    return {
        "queue": params.queue,
        "task": params.task,
        "args": dump_json(params.args, f"arguments of task {params.task!r}"),
        "state": str(JobState.SCHEDULED if run_at > now else JobState.AVAILABLE),
        "priority": params.priority,
        "max_attempts": params.max_attempts,
        "run_at": run_at,
        "unique_key": params.unique_key,
        "singleton_key": params.singleton_key,
        "overlap": str(params.overlap),
        "timeout": params.timeout,
        "concurrency_key": params.concurrency_key,
    }


def insert_job(
    conn: psycopg.Connection[Any],
    params: JobInsert,
    now: datetime,
    schedule: str | None = None,
    slot: datetime | None = None,
) -> JobInsertResult:
    """Insert one job, or return the unfinished job that already holds its unique key."""
    now = utc(now)
    values = {
        **_insert_values(params, now),
        "created_at": now,
        "schedule": schedule,
        "slot": None if slot is None else utc(slot),
    }
    for _ in range(_CONFLICT_RETRIES):
        row = fetch_one(conn, "job_insert", values)
        if row is not None:
            return JobInsertResult(to_job(row), created=True)
        existing = None
        if params.unique_key is not None:
            existing = fetch_one(
                conn, "job_get_unfinished_by_unique_key", {"unique_key": params.unique_key}
            )
        if existing is None and schedule is not None:
            existing = fetch_one(
                conn, "job_get_by_slot", {"schedule": schedule, "slot": values["slot"]}
            )
        if existing is not None:
            return JobInsertResult(to_job(existing), created=False)
        # The job we conflicted with finished before we could read it: its key is free again.
    raise StoreError(
        f"inserting a job of task {params.task!r} kept conflicting with no visible job"
    )


def insert_jobs(
    conn: psycopg.Connection[Any], params: Sequence[JobInsert], now: datetime
) -> list[JobInsertResult]:
    now = utc(now)
    results: list[JobInsertResult] = []
    woken: set[str] = set()
    for chunk in iter_chunks(params, INSERT_CHUNK):
        chunk_results = _insert_chunk(conn, chunk, now)
        results.extend(chunk_results)
        woken.update(
            r.job.queue for r in chunk_results if r.created and r.job.state == JobState.AVAILABLE
        )
    if woken:
        fetch(conn, "notify_queues", {"queues": sorted(woken)})
    return results


def _insert_chunk(
    conn: psycopg.Connection[Any], chunk: Sequence[JobInsert], now: datetime
) -> list[JobInsertResult]:
    rows = []
    now_text = now.isoformat()
    for index, item in enumerate(chunk):
        run_at = now if item.run_at is None else utc(item.run_at)
        row = {
            "ord": index,
            "queue": item.queue,
            "task": item.task,
            "args": item.args,
            "state": "scheduled" if run_at > now else "available",
            "priority": item.priority,
            "max_attempts": item.max_attempts,
            "run_at": now_text if run_at is now else run_at.isoformat(),
            "unique_key": item.unique_key,
            "singleton_key": item.singleton_key,
            "overlap": str(item.overlap),
            "timeout": item.timeout,
            "concurrency_key": item.concurrency_key,
        }
        rows.append(row)
    answers = fetch(conn, "job_insert_many", {"rows": _dump_rows(rows, chunk), "created_at": now})
    results: list[JobInsertResult | None] = [
        JobInsertResult(_new_job(int(answer["id"]), item, now), created=True)
        if answer["created"]
        else None
        for item, answer in zip(chunk, answers, strict=True)
    ]
    conflicted = [index for index, result in enumerate(results) if result is None]
    if conflicted:
        keys = sorted({key for i in conflicted if (key := chunk[i].unique_key) is not None})
        existing = {
            row["unique_key"]: to_job(row)
            for row in fetch(conn, "job_get_unfinished_by_unique_keys", {"unique_keys": keys})
        }
        for index in conflicted:
            job = existing.get(chunk[index].unique_key)
            # No holder left (it finished meanwhile): insert this one on its own.
            results[index] = (
                JobInsertResult(job, created=False)
                if job is not None
                else insert_job(conn, chunk[index], now)
            )
    return [result for result in results if result is not None]


def _new_job(job_id: int, params: JobInsert, now: datetime) -> Job:
    """The job as its insert creates it (the table's defaults for everything else), so a bulk
    insert need not read 20,000 rows back."""
    run_at = now if params.run_at is None else utc(params.run_at)
    return Job(
        id=job_id,
        queue=params.queue,
        task=params.task,
        args=dict(params.args),
        state=JobState.SCHEDULED if run_at > now else JobState.AVAILABLE,
        priority=params.priority,
        attempt=0,
        max_attempts=params.max_attempts,
        run_at=run_at,
        created_at=now,
        unique_key=params.unique_key,
        singleton_key=params.singleton_key,
        overlap=Overlap(params.overlap),
        timeout=params.timeout,
        concurrency_key=params.concurrency_key,
    )


def _dump_rows(rows: list[dict[str, Any]], chunk: Sequence[JobInsert]) -> str:
    try:
        return json.dumps(rows, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        for item in chunk:  # name the job whose arguments are not JSON
            dump_json(item.args, f"arguments of task {item.task!r}")
        raise


# read -------------------------------------------------------------------------------------------


def get_job(conn: psycopg.Connection[Any], job_id: int) -> Job | None:
    row = fetch_one(conn, "job_get", {"id": job_id})
    return None if row is None else to_job(row)


def list_jobs(conn: psycopg.Connection[Any], flt: JobFilter) -> list[Job]:
    params = {
        "state": None if flt.state is None else str(flt.state),
        "queue": flt.queue,
        "task": flt.task,
        "schedule": flt.schedule,
        "before_id": flt.before_id,
        "limit": flt.limit,
    }
    return [to_job(row) for row in fetch(conn, "job_list", params)]


def count_jobs(conn: psycopg.Connection[Any]) -> list[QueueCount]:
    return [
        QueueCount(queue=row["queue"], state=JobState(row["state"]), count=int(row["count"]))
        for row in fetch(conn, "job_counts")
    ]


def expired_jobs(conn: psycopg.Connection[Any], now: datetime, limit: int) -> list[Job]:
    return [to_job(row) for row in fetch(conn, "job_expired", {"now": utc(now), "limit": limit})]


# human actions ----------------------------------------------------------------------------------


def set_slot_outcome(
    conn: psycopg.Connection[Any], job: Job, outcome: SlotOutcome, note: str | None, now: datetime
) -> None:
    """Record ``outcome`` on the ledger row of the slot ``job`` was enqueued for, if any."""
    if job.schedule is None or job.slot is None:
        return
    values = {
        "schedule": job.schedule,
        "slot": job.slot,
        "job_id": job.id,
        "outcome": str(outcome),
        "note": note,
        "now": now,
    }
    execute(conn, "slot_set_outcome", values)


def _locked_job(conn: psycopg.Connection[Any], job_id: int) -> Job:
    row = fetch_one(conn, "job_get_for_update", {"id": job_id})
    if row is None:
        raise NotFound(f"job {job_id} does not exist")
    return to_job(row)


def cancel_job(conn: psycopg.Connection[Any], job_id: int, now: datetime, reason: str) -> Job:
    """End a waiting job now; flag a running one so its worker stops it."""
    now = utc(now)
    job = _locked_job(conn, job_id)
    if job.state == JobState.RUNNING:
        row = fetch_one(conn, "job_request_cancel", {"id": job_id})
        return job if row is None else to_job(row)
    if job.state.finished:
        return job
    error = JobError(attempt=job.attempt, at=now, kind=ErrorKind.CANCELLED, message=reason)
    row = fetch_one(
        conn, "job_cancel_waiting", {"id": job_id, "now": now, "errors": errors_json(error)}
    )
    if row is None:
        return job
    cancelled = to_job(row)
    set_slot_outcome(conn, cancelled, SlotOutcome.FAILED, lifecycle.cancelled_note(reason), now)
    return cancelled


def retry_job(conn: psycopg.Connection[Any], job_id: int, now: datetime) -> Job:
    """Make a failed, cancelled, retryable or scheduled job available now (a human's retry)."""
    now = utc(now)
    job = _locked_job(conn, job_id)
    if job.state == JobState.AVAILABLE:
        return job
    if job.state in (JobState.RUNNING, JobState.SUCCEEDED):
        raise ConfigError(lifecycle.retry_refusal(job_id, job.state))
    try:
        row = fetch_one(conn, "job_retry", {"id": job_id, "now": now})
    except psycopg.errors.UniqueViolation:
        raise ConfigError(
            f"job {job_id} cannot be retried: another unfinished job holds its unique key "
            f"{job.unique_key!r}"
        ) from None
    if row is None:
        return job
    retried = to_job(row)
    if job.state in FINISHED_STATES:
        set_slot_outcome(conn, retried, SlotOutcome.ENQUEUED, lifecycle.RETRIED_BY_HAND, now)
    return retried


# fences and checkpoints -------------------------------------------------------------------------


def fence_live(conn: psycopg.Connection[Any], job_id: int, fence: int, now: datetime) -> bool:
    params = {"job_id": job_id, "fence": fence, "now": utc(now)}
    return fetch_one(conn, "job_fence_live", params) is not None


def lock_fence(conn: psycopg.Connection[Any], job_id: int, fence: int, now: datetime) -> bool:
    """Share-lock the job row and its key's lease row; True if the fence is current and its
    lease unexpired at ``now``. The locks hold until the transaction ends."""
    now = utc(now)
    job = fetch_one(conn, "job_fence_lock", {"job_id": job_id})
    if job is None or not _holds(
        job["state"] == "running", job["fence"], job["lease_expires_at"], fence, now
    ):
        return False
    if job["singleton_key"] is None:
        return True
    lease = fetch_one(conn, "lease_fence_lock", {"key": job["singleton_key"]})
    return lease is not None and _holds(True, lease["fence"], lease["expires_at"], fence, now)


def _holds(
    running: bool, found: int, expires_at: datetime | None, fence: int, now: datetime
) -> bool:
    return running and found == fence and expires_at is not None and expires_at > now


def checkpoint_job(
    conn: psycopg.Connection[Any], job_id: int, fence: int, data: Any, now: datetime
) -> bool:
    params = {
        "job_id": job_id,
        "fence": fence,
        "now": utc(now),
        "checkpoint": dump_json(data, f"checkpoint of job {job_id}"),
    }
    return execute(conn, "job_checkpoint", params) > 0


def prune_jobs(conn: psycopg.Connection[Any], params: PruneParams) -> int:
    if params.state not in FINISHED_STATES:
        raise ValueError(f"only finished jobs can be pruned, not {params.state!r}")
    if params.queue is not None and params.finished_before is not None and not params.keep_last:
        # The pruner's case: one queue, by age, along the retention index.
        values = {
            "queue": params.queue,
            "state": str(params.state),
            "finished_before": utc(params.finished_before),
            "limit": params.limit,
        }
        return execute(conn, "job_prune_queue", values)
    values = {
        "state": str(params.state),
        "queue": params.queue,
        "finished_before": None if params.finished_before is None else utc(params.finished_before),
        "keep_last": max(0, params.keep_last or 0),
        "limit": params.limit,
    }
    return execute(conn, "job_prune", values)

