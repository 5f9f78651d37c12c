"""Job operations outside the claim/finish cycle, written once for every dialect: insert, read,
cancel, retry (one, or a batch of dead letters), rescue listing, fence checks, checkpoints,
pruning and the retention queries.

Each function takes the store's :class:`~oncely.store.dialect.Dialect` and a connection the
caller has put in a transaction. The transitions follow :mod:`oncely.lifecycle`; the SQL checks
the same states, so a row that moved meanwhile is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from oncely import lifecycle
from oncely.errors import ConfigError, NotFound, StoreError
from oncely.lifecycle import CancelAction, RetryAction
from oncely.store.base import (
    JobFilter,
    JobFinish,
    JobInsert,
    JobInsertResult,
    PruneParams,
    QueueCount,
    RetryFailed,
    RetryFailedResult,
)
from oncely.store.dialect import Dialect, Row
from oncely.store.rows import as_datetime, as_required_datetime, dump_json, job_from_row
from oncely.types import FINISHED_STATES, ErrorKind, Job, JobError, JobState, Overlap, SlotOutcome

_CONFLICT_RETRIES = 3


def to_job(d: Dialect, row: Row) -> Job:
    return job_from_row(row, json_text=d.json_text)


# insert -----------------------------------------------------------------------------------------


def insert_job(
    d: Dialect,
    conn: Any,
    params: JobInsert,
    now: datetime,
    schedule: str | None = None,
    slot: datetime | None = None,
) -> JobInsertResult:
    """Insert one job, or return the unfinished job that already holds its unique key (or its
    slot)."""
    now_value = d.instant(now)
    run_at = now_value if params.run_at is None else d.instant(params.run_at)
    values = {
        "queue": params.queue,
        "task": params.task,
        "args": params.args_json if params.args_json is not None
        else dump_json(params.args, f"arguments of task {params.task!r}"),
        "state": str(JobState.SCHEDULED if run_at > now_value else JobState.AVAILABLE),
        "priority": params.priority,
        "max_attempts": params.max_attempts,
        "run_at": run_at,
        "created_at": now_value,
        "unique_key": params.unique_key,
        "schedule": schedule,
        "slot": d.instant_or_none(slot),
        "singleton_key": params.singleton_key,
        "overlap": str(params.overlap),
        "timeout": params.timeout,
        "concurrency_key": params.concurrency_key,
        "catch_up": params.catch_up if slot is not None else None,
        "misfire_grace": params.misfire_grace if slot is not None else None,
    }
    for _ in range(_CONFLICT_RETRIES):
        row = d.fetch_one(conn, "job_insert", values)
        if row is not None:
            return JobInsertResult(inserted_job(int(row["id"]), params, values), created=True)
        existing = None
        if params.unique_key is not None:
            existing = d.fetch_one(
                conn, "job_get_unfinished_by_unique_key", {"unique_key": params.unique_key}
            )
        if existing is None and schedule is not None:
            existing = d.fetch_one(
                conn, "job_get_by_slot", {"schedule": schedule, "slot": values["slot"]}
            )
        if existing is not None:
            return JobInsertResult(to_job(d, existing), created=False)
        # The job we conflicted with finished before we could read it: its key is free again.
    raise StoreError(
        f"inserting a job of task {params.task!r} kept conflicting with no visible job"
    )


def inserted_job(job_id: int, params: JobInsert, values: dict[str, Any]) -> Job:
    """The job as its insert wrote it (the table's defaults for everything else): built from
    what was written rather than read back, so bulk enqueues stay cheap."""
    return Job(
        id=job_id,
        queue=params.queue,
        task=params.task,
        args=dict(params.args),
        state=JobState(values["state"]),
        priority=params.priority,
        attempt=0,
        max_attempts=params.max_attempts,
        run_at=as_required_datetime(values["run_at"]),
        created_at=as_required_datetime(values["created_at"]),
        unique_key=params.unique_key,
        schedule=values.get("schedule"),
        slot=as_datetime(values.get("slot")),
        singleton_key=params.singleton_key,
        overlap=Overlap(params.overlap),
        timeout=params.timeout,
        concurrency_key=params.concurrency_key,
    )


def insert_jobs(
    d: Dialect, conn: Any, params: Sequence[JobInsert], now: datetime
) -> list[JobInsertResult]:
    return [insert_job(d, conn, item, now) for item in params]


# read -------------------------------------------------------------------------------------------


def get_job(d: Dialect, conn: Any, job_id: int) -> Job | None:
    row = d.fetch_one(conn, "job_get", {"id": job_id})
    return None if row is None else to_job(d, row)


def list_jobs(d: Dialect, conn: Any, flt: JobFilter) -> list[Job]:
    params = {
        "state": None if flt.state is None else str(flt.state),
        "queue": flt.queue,
        "task": flt.task,
        "schedule": flt.schedule,
        "before_id": flt.before_id,
        "limit": flt.limit,
    }
    return [to_job(d, row) for row in d.fetch(conn, "job_list", params)]


def count_jobs(d: Dialect, conn: Any) -> list[QueueCount]:
    return [
        QueueCount(queue=row["queue"], state=JobState(row["state"]), count=int(row["count"]))
        for row in d.fetch(conn, "job_count_by_state")
    ]


def get_expired_jobs(d: Dialect, conn: Any, now: datetime, limit: int) -> list[Job]:
    rows = d.fetch(conn, "job_get_expired", {"now": d.instant(now), "limit": limit})
    return [to_job(d, row) for row in rows]


def is_plain_success(params: JobFinish) -> bool:
    """A success the batch finish (``job_finish_plain_many``) may record in one statement with
    others: no error, no refund, not a rescue. The statement itself checks that the job has no
    singleton key and no slot; any other finish goes through the full one."""
    return (params.state == JobState.SUCCEEDED and params.error is None
            and not params.require_expired_lease and not params.refund_attempt)


def finish_target_values(params: JobFinish, now: Any) -> dict[str, Any]:
    """The parameters of ``job_get_finish_target``, which finds the job a fenced finish may move
    (running under that fence; for the rescuer, with its lease still expired at ``now``)."""
    return {
        "job_id": params.job_id,
        "fence": params.fence,
        "now": now,
        "require_expired": params.require_expired_lease,
    }


# the slot ledger --------------------------------------------------------------------------------


def set_ledger_outcome(
    d: Dialect,
    conn: Any,
    key: tuple[str, Any],
    job_id: int,
    outcome: SlotOutcome,
    note: str | None,
    now: Any,
) -> None:
    """Record ``outcome`` on the ledger row ``key`` (schedule, stored slot) of job ``job_id``;
    ``now`` as stored."""
    values = {
        "schedule": key[0],
        "slot": key[1],
        "job_id": job_id,
        "outcome": str(outcome),
        "note": note,
        "now": now,
    }
    d.execute(conn, "slot_set_outcome", values)


def set_slot_outcome(
    d: Dialect, conn: Any, job: Job, outcome: SlotOutcome, note: str | None, now: Any
) -> None:
    """Record ``outcome`` on the ledger row of the slot ``job`` was enqueued for, if any."""
    if job.schedule is None or job.slot is None:
        return
    set_ledger_outcome(d, conn, (job.schedule, d.instant(job.slot)), job.id, outcome, note, now)


# human actions ----------------------------------------------------------------------------------


def _locked_job(d: Dialect, conn: Any, job_id: int) -> Job:
    row = d.fetch_one(conn, "job_get_for_update", {"id": job_id})
    if row is None:
        raise NotFound(f"job {job_id} does not exist")
    return to_job(d, row)


def cancel_job(d: Dialect, conn: Any, job_id: int, now: datetime, reason: str) -> Job:
    """End a waiting job now; flag a running one so its worker stops it."""
    job = _locked_job(d, conn, job_id)
    action = lifecycle.cancel_action(job.state)
    if action == CancelAction.NOTHING:
        return job
    if action == CancelAction.REQUEST:
        row = d.fetch_one(conn, "job_request_cancel", {"id": job_id})
        return job if row is None else to_job(d, row)
    now_value = d.instant(now)
    error = JobError(attempt=job.attempt, at=now, kind=ErrorKind.CANCELLED, message=reason)
    values = {"id": job_id, "now": now_value, "error": d.error_param(error)}
    row = d.fetch_one(conn, "job_cancel_waiting", values)
    if row is None:
        return job
    cancelled = to_job(d, row)
    note = lifecycle.cancelled_note(reason)
    set_slot_outcome(d, conn, cancelled, SlotOutcome.FAILED, note, now_value)
    return cancelled


def retry_job(d: Dialect, conn: Any, job_id: int, now: datetime) -> Job:
    """Make a failed, cancelled, retryable or scheduled job available now (a human's retry)."""
    job = _locked_job(d, conn, job_id)
    action = lifecycle.retry_action(job.state)
    if action == RetryAction.NOTHING:
        return job
    if action == RetryAction.REFUSE:
        raise ConfigError(lifecycle.retry_refusal(job_id, job.state))
    now_value = d.instant(now)
    try:
        row = d.fetch_one(conn, "job_retry", {"id": job_id, "now": now_value})
    except d.unique_violation:
        raise ConfigError(
            f"job {job_id} cannot be retried: another unfinished job holds its unique key "
            f"{job.unique_key!r}"
        ) from None
    if row is None:
        return job
    retried = to_job(d, row)
    if job.state in FINISHED_STATES:
        note = lifecycle.RETRIED_BY_HAND
        set_slot_outcome(d, conn, retried, SlotOutcome.ENQUEUED, note, now_value)
    return retried


def retry_failed(d: Dialect, conn: Any, params: RetryFailed) -> RetryFailedResult:
    """One batch of dead letters back to available, each under a savepoint: a job whose unique
    key another unfinished job holds stays failed without undoing the rest."""
    values = {
        "after_id": params.after_id,
        "queue": params.queue,
        "task": params.task,
        "limit": params.limit,
    }
    ids = [int(row["id"]) for row in d.fetch(conn, "job_get_failed_batch", values)]
    retried: list[Job] = []
    conflicts: list[int] = []
    for job_id in ids:
        try:
            with d.savepoint(conn):
                retried.append(retry_job(d, conn, job_id, params.now))
        except ConfigError:
            conflicts.append(job_id)
    return RetryFailedResult(retried, conflicts, ids[-1] if ids else None)


def key_waiting_manual_jobs(d: Dialect, conn: Any, task: str, key: str) -> int:
    """Give ``key`` to the waiting manual jobs of ``task`` that have no singleton key (see
    :meth:`oncely.store.base.Store.job_key_waiting`); returns how many took it."""
    return d.execute(conn, "job_key_waiting", {"task": task, "key": key})


# fences and checkpoints -------------------------------------------------------------------------


def fence_live(d: Dialect, conn: Any, job_id: int, fence: int, now: datetime) -> bool:
    params = {"job_id": job_id, "fence": fence, "now": d.instant(now)}
    return d.fetch_one(conn, "job_check_fence", params) is not None


def checkpoint_job(
    d: Dialect, conn: Any, job_id: int, fence: int, data: Any, now: datetime
) -> bool:
    params = {
        "job_id": job_id,
        "fence": fence,
        "now": d.instant(now),
        "checkpoint": dump_json(data, f"checkpoint of job {job_id}"),
    }
    return d.execute(conn, "job_checkpoint", params) > 0


# retention --------------------------------------------------------------------------------------


def prune_jobs(d: Dialect, conn: Any, params: PruneParams) -> int:
    if params.state not in FINISHED_STATES:
        raise ValueError(f"only finished jobs can be pruned, not {params.state!r}")
    if params.queue is not None and params.finished_before is not None and not params.keep_last:
        # The pruner's case: one queue, by age, along the retention index.
        values = {
            "queue": params.queue,
            "state": str(params.state),
            "finished_before": d.instant(params.finished_before),
            "limit": params.limit,
        }
        return d.execute(conn, "job_prune_queue", values)
    values = {
        "state": str(params.state),
        "queue": params.queue,
        "finished_before": d.instant_or_none(params.finished_before),
        "keep_last": max(0, params.keep_last or 0),
        "limit": params.limit,
    }
    return d.execute(conn, "job_prune", values)


def finished_queues(d: Dialect, conn: Any) -> list[str]:
    return [row["queue"] for row in d.fetch(conn, "job_get_finished_queues")]


def finished_cutoff(
    d: Dialect, conn: Any, queue: str, state: JobState, keep: int
) -> datetime | None:
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    values = {"queue": queue, "state": str(state), "skip": keep - 1}
    row = d.fetch_one(conn, "job_get_finished_cutoff", values)
    return None if row is None else as_datetime(row["finished_at"])
