"""Rescue and liveness, written once for every dialect (the types and the transition are drawn
in :mod:`oncely.store.rescue`; whether a rescue retries or fails, and what it notes, is
:mod:`oncely.lifecycle`'s).

What differs per dialect is only how a worker's liveness lock is taken and proven free: the
dialect's :meth:`~oncely.store.dialect.Dialect.liveness_lock` and
:meth:`~oncely.store.dialect.Dialect.owners_gone`.
"""

from __future__ import annotations

from typing import Any

from oncely import lifecycle
from oncely.store.dialect import Dialect
from oncely.store.ops.jobs import to_job
from oncely.store.rescue import JobRescue, RescueOutcome
from oncely.types import Job, JobError, JobState


def rescue_job(d: Dialect, conn: Any, params: JobRescue) -> RescueOutcome | None:
    """Rescue the job if it still runs under the fence the rescuer saw and its lease expired
    (or its owner is the one proven gone); None when it moved on meanwhile."""
    now = d.instant(params.now)
    target = d.fetch_one(conn, "job_rescue_target", {
        "job_id": params.job_id, "fence": params.fence, "now": now, "owner": params.owner,
    })
    if target is None:
        return None
    rescues = int(target["rescues"]) + 1
    state = lifecycle.rescue_state(rescues, params.max_rescues)
    message = lifecycle.rescue_message(rescues, params.max_rescues, params.reason)
    error = JobError(int(target["attempt"]), params.now, params.kind, message)
    d.execute(conn, "job_rescue", {
        "job_id": params.job_id, "retry": state == JobState.RETRYABLE, "now": now,
        "error": d.error_param(error),
    })
    if target["singleton_key"] is not None:
        d.execute(conn, "lease_release", {"key": target["singleton_key"], "fence": params.fence})
    if target["schedule"] is not None:
        outcome = lifecycle.slot_outcome(state)
        d.execute(conn, "slot_note_rescue", {
            "schedule": target["schedule"], "slot": target["slot"], "job_id": params.job_id,
            "outcome": None if outcome is None else str(outcome),
            "note": lifecycle.rescue_note(rescues, params.max_rescues, params.reason),
            "now": now,
        })
    return RescueOutcome(params.job_id, state, rescues)


def running_of(d: Dialect, conn: Any, owner: str, limit: int) -> list[Job]:
    """The running jobs ``owner`` holds the lease of."""
    rows = d.fetch(conn, "job_running_of", {"owner": owner, "limit": limit})
    return [to_job(d, row) for row in rows]


def set_liveness(d: Dialect, conn: Any, worker_id: str, token: str | None) -> None:
    """Record the worker's liveness token in its (registered) row."""
    d.execute(conn, "worker_liveness_set", {"worker_id": worker_id, "liveness": token})
