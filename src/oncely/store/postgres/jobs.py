"""What the PostgreSQL store does differently with jobs: a bulk enqueue that wakes idle workers
once per queue, and the row locks behind ``fenced_transaction``.

A bulk enqueue writes a chunk of jobs without a unique key (nothing can conflict: ids come from
the table's sequence and only slot jobs, never enqueued in bulk, have a slot) with ``COPY … FROM
STDIN`` in binary, under ids drawn from the sequence first: the server inserts the rows in
batches rather than one by one, about twice the rows per second of an ``INSERT … SELECT``. A
chunk with unique keys goes through one ``INSERT … ON CONFLICT DO NOTHING`` statement, which
says which rows found their key held.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.pq import Format

from oncely.store.base import JobInsert, JobInsertResult, iter_chunks
from oncely.store.ops.jobs import insert_job, inserted_job
from oncely.store.postgres.dialect import QUERIES, PostgresDialect, fetch, fetch_one, to_job
from oncely.store.rows import dump_json, utc
from oncely.types import Job, JobState

INSERT_CHUNK = 5000  # rows per INSERT statement of job_insert_many


def insert_jobs(
    d: PostgresDialect, conn: psycopg.Connection[Any], params: Sequence[JobInsert], now: datetime
) -> list[JobInsertResult]:
    now = utc(now)
    results: list[JobInsertResult] = []
    woken: set[str] = set()
    for chunk in iter_chunks(params, INSERT_CHUNK):
        if any(item.unique_key is not None for item in chunk):
            chunk_results = _insert_chunk(d, conn, chunk, now)
        else:
            chunk_results = _copy_chunk(conn, chunk, now)
        results.extend(chunk_results)
        woken.update(
            r.job.queue for r in chunk_results if r.created and r.job.state == JobState.AVAILABLE
        )
    if woken:
        fetch(conn, "notify_queues", {"queues": sorted(woken)})
    return results


def _insert_chunk(
    d: PostgresDialect, conn: psycopg.Connection[Any], chunk: Sequence[JobInsert], now: datetime
) -> list[JobInsertResult]:
    rows = []
    written: list[dict[str, Any]] = []  # what the insert writes, to build the jobs from
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
        written.append({"state": row["state"], "run_at": run_at, "created_at": now})
    # Plain tuples (ord, id, created): a dict per answer row costs more than the rest of it.
    with conn.cursor() as cur:
        cur.execute(d.queries["job_insert_many"],
                    {"rows": _dump_rows(rows, chunk), "created_at": now}, prepare=True)
        answers = cur.fetchall()
    results: list[JobInsertResult | None] = [
        JobInsertResult(inserted_job(int(answer[1]), item, values), created=True)
        if answer[2]
        else None
        for item, answer, values in zip(chunk, answers, written, strict=True)
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
                else insert_job(d, conn, chunk[index], now)
            )
    return [result for result in results if result is not None]


# The columns _copy_chunk writes, with their types for the binary COPY.
_COPY_TYPES = ["int8", "text", "text", "jsonb", "text", "int4", "int4", "timestamptz",
               "timestamptz", "text", "text", "float8", "text"]


def _copy_chunk(
    conn: psycopg.Connection[Any], chunk: Sequence[JobInsert], now: datetime
) -> list[JobInsertResult]:
    """Jobs without a unique key, written with one COPY under ids drawn beforehand (ascending,
    so the chunk keeps its order among jobs of the same priority and due time)."""
    with conn.cursor() as cur:
        cur.execute(QUERIES["job_reserve_ids"], {"count": len(chunk)}, prepare=True)
        ids = sorted(int(row[0]) for row in cur.fetchall())
        results: list[JobInsertResult] = []
        # Every field of a new job that its insert does not set, as the table's defaults give it.
        blank = vars(Job(id=0, queue="", task="", args={}, state=JobState.AVAILABLE, priority=0,
                         attempt=0, max_attempts=1, run_at=now, created_at=now))
        cur.adapters.register_dumper(None, _JsonbTextDumper)  # this cursor's jsonb: text
        with cur.copy(QUERIES["job_copy"]) as copy:
            copy.set_types(_COPY_TYPES)
            for job_id, item in zip(ids, chunk, strict=True):
                run_at = now if item.run_at is None else utc(item.run_at)
                state = JobState.SCHEDULED if run_at > now else JobState.AVAILABLE
                args = item.args_json
                if args is None:
                    args = dump_json(item.args, f"arguments of task {item.task!r}")
                copy.write_row((job_id, item.queue, item.task, args, state.value,
                                item.priority, item.max_attempts, run_at, now,
                                item.singleton_key, item.overlap.value, item.timeout,
                                item.concurrency_key))
                # Built from the blank job's fields rather than through the frozen dataclass's
                # __init__, which sets its 26 fields one object.__setattr__ at a time: a third
                # of the whole enqueue's time per job.
                job = object.__new__(Job)
                vars(job).update(blank, id=job_id, queue=item.queue, task=item.task,
                                 args=dict(item.args), state=state, priority=item.priority,
                                 max_attempts=item.max_attempts, run_at=run_at,
                                 singleton_key=item.singleton_key, overlap=item.overlap,
                                 timeout=item.timeout, concurrency_key=item.concurrency_key)
                results.append(JobInsertResult(job, created=True))
    return results


class _JsonbTextDumper(Dumper):
    """jsonb in binary from JSON text already encoded (the args' text their check produced):
    the format's version byte, then the text."""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode()


def _dump_rows(rows: list[dict[str, Any]], chunk: Sequence[JobInsert]) -> str:
    try:
        return json.dumps(rows, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        for item in chunk:  # name the job whose arguments are not JSON
            dump_json(item.args, f"arguments of task {item.task!r}")
        raise


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
