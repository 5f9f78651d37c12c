"""The engine's domain types: jobs, their states, slot outcomes, overlap policies, errors.

A leaf module: it imports nothing of oncely, so the rules (schedules, worker, maintenance), the
store and applications can all use these types without depending on one another. The rules that
move a job or a slot from one state to another are in :mod:`oncely.lifecycle`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class JobState(enum.StrEnum):
    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRYABLE = "retryable"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


WAITING_STATES = (JobState.SCHEDULED, JobState.AVAILABLE, JobState.RETRYABLE)
FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class SlotOutcome(enum.StrEnum):
    ENQUEUED = "enqueued"
    RAN = "ran"
    FAILED = "failed"
    SKIPPED_OVERLAP = "skipped_overlap"
    MISSED = "missed"
    COALESCED = "coalesced"
    PAUSED = "paused"  # due while an operator had paused the schedule: nothing was expected


class Overlap(enum.StrEnum):
    SKIP = "skip"
    BUFFER_ONE = "buffer_one"
    ALLOW = "allow"


class ErrorKind(enum.StrEnum):
    ERROR = "error"  # the handler raised
    TIMEOUT = "timeout"  # the handler outlived the task's timeout
    LEASE_EXPIRED = "lease_expired"  # the rescuer found the lease expired (worker died or paused)
    LEASE_LOST = "lease_lost"  # the worker could not renew and stopped the job itself
    WORKER_GONE = "worker_gone"  # rescued at once: its worker's liveness lock was released
    SHUTDOWN = "shutdown"  # released by a graceful shutdown
    RETRY = "retry"  # the handler raised oncely.Retry
    CANCELLED = "cancelled"  # cancelled by a human or by the handler


@dataclass(frozen=True)
class JobError:
    attempt: int
    at: datetime
    kind: ErrorKind
    message: str
    traceback: str | None = None


@dataclass(frozen=True)
class Job:
    id: int
    queue: str
    task: str
    args: dict[str, Any]
    state: JobState
    priority: int
    attempt: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    unique_key: str | None = None
    schedule: str | None = None
    slot: datetime | None = None
    singleton_key: str | None = None
    overlap: Overlap = Overlap.SKIP
    timeout: float | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    fence: int = 0
    cancel_requested: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    errors: tuple[JobError, ...] = ()
    checkpoint: Any = None
    concurrency_key: str | None = None
