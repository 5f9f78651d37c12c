"""The frozen dataclasses that go in and out of the storage seam
(:class:`~oncely.store.base.Store`): one parameter object per operation that needs more than a few
values, one row type per thing it lists. :mod:`oncely.store.base` names them all; import them
from there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from oncely import sql
from oncely.store.controls import LimitWait
from oncely.types import Job, JobError, JobState, Overlap, SlotOutcome


@dataclass(frozen=True)
class JobInsert:
    """One job to enqueue. ``run_at`` None means now; args must already be JSON-safe."""

    task: str
    queue: str = "default"
    args: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    run_at: datetime | None = None
    max_attempts: int = 1
    unique_key: str | None = None
    singleton_key: str | None = None
    overlap: Overlap = Overlap.SKIP
    timeout: float | None = None
    concurrency_key: str | None = None
    # a slot job's schedule policies, applied again when the job is claimed (None: not a slot)
    catch_up: str | None = None
    misfire_grace: float | None = None
    # ``args`` as JSON text when the caller already encoded them (a store may write it as is)
    args_json: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class JobInsertResult:
    job: Job
    created: bool  # False: an unfinished job with the same unique_key already existed


@dataclass(frozen=True)
class JobClaimParams:
    worker_id: str
    now: datetime
    limit: int
    lease_ttl: float
    queues: tuple[str, ...] | None = None  # None: every queue
    tasks: tuple[str, ...] | None = None  # the task names the worker has; None: any task


@dataclass(frozen=True)
class ClaimResult:
    jobs: list[Job]
    skipped_overlap: list[Job] = field(default_factory=list)
    # scopes whose controls held due jobs back in this claim (see "Queue controls")
    waits: list[LimitWait] = field(default_factory=list)
    # waiting slot jobs the claim ended by their schedule's policies (store.ops.claimpolicy)
    policy_ended: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class JobFinish:
    """A fenced transition out of ``running``.

    ``state`` is the target: succeeded, retryable (needs ``retry_at``), failed or cancelled.
    ``refund_attempt`` (graceful release) gives the attempt back. ``require_expired_lease``
    (the rescuer) applies the transition only if the lease is still expired at ``now``.
    """

    job_id: int
    fence: int
    now: datetime
    state: JobState
    result: Any = None
    error: JobError | None = None
    retry_at: datetime | None = None
    refund_attempt: bool = False
    require_expired_lease: bool = False


@dataclass(frozen=True)
class LeaseRenewal:
    job_id: int
    fence: int


@dataclass(frozen=True)
class RenewResult:
    renewed: bool
    cancel_requested: bool = False
    lease_expires_at: datetime | None = None


@dataclass(frozen=True)
class JobFilter:
    state: JobState | None = None
    queue: str | None = None
    task: str | None = None
    schedule: str | None = None
    limit: int = 50
    before_id: int | None = None  # keyset pagination: newest first, ids below this one


@dataclass(frozen=True)
class QueueCount:
    queue: str
    state: JobState
    count: int


@dataclass(frozen=True)
class PruneParams:
    state: JobState  # a finished state
    finished_before: datetime | None = None  # delete finished before this instant
    keep_last: int | None = None  # ...but always keep the newest N of this state
    queue: str | None = None
    limit: int = 1000  # rows per call: pruning works in batches


@dataclass(frozen=True)
class RetryFailed:
    """One batch of dead letters to bring back: failed jobs (of ``queue``/``task`` when given)
    with ids above ``after_id``, oldest first."""

    now: datetime
    queue: str | None = None
    task: str | None = None
    after_id: int = 0
    limit: int = 500


@dataclass(frozen=True)
class RetryFailedResult:
    retried: list[Job]
    # left failed: another unfinished job holds their unique key
    conflicts: list[int] = field(default_factory=list)
    last_id: int | None = None  # the highest id this batch looked at (None: nothing left)


@dataclass(frozen=True)
class ScheduleUpsert:
    name: str
    task: str
    spec: dict[str, Any]  # the schedule's full definition, JSON-safe
    spec_hash: str
    now: datetime
    origin: str = "declared"  # "declared" by an app's code, or "dynamic": created at run time
    force: bool = False  # an operator's apply: even a definition held before becomes current


class UpsertOutcome(enum.StrEnum):
    """What a declaration did to the stored schedule (state machine in
    :mod:`oncely.maintenance.enqueuer`)."""

    CREATED = "created"  # revision 1
    UPDATED = "updated"  # a new revision is in force
    UNCHANGED = "unchanged"  # the definition in force was declared again
    SUPERSEDED = "superseded"  # an older definition was declared: the stored one stays
    REFUSED = "refused"  # the name belongs to a schedule of the other origin


@dataclass(frozen=True)
class ScheduleRow:
    name: str
    task: str
    spec: dict[str, Any]
    spec_hash: str
    cursor: datetime | None  # the newest slot the enqueuer has dealt with
    created_at: datetime
    updated_at: datetime
    declared_at: datetime  # last time a worker registered it
    revision: int = 1
    hashes: tuple[str, ...] = ()  # the hash of every revision, oldest first
    origin: str = "declared"
    paused_at: datetime | None = None
    paused_reason: str | None = None
    switch_cursor: datetime | None = None  # the cursor when this revision took effect

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def revision_of(self, spec_hash: str) -> int | None:
        """The newest revision that had this definition; None if the row never held it."""
        for index in range(len(self.hashes) - 1, -1, -1):
            if self.hashes[index] == spec_hash:
                return index + 1
        return None


@dataclass(frozen=True)
class SlotEnqueue:
    """Record one slot. With ``job`` set: ledger row ``enqueued`` plus its job; otherwise a ledger
    row with ``outcome`` (missed, coalesced, skipped_overlap) and no job."""

    schedule: str
    slot: datetime
    now: datetime
    job: JobInsert | None = None
    outcome: SlotOutcome = SlotOutcome.ENQUEUED
    note: str | None = None
    # The enqueuer's guard: record the slot only while the schedule is at this revision with
    # this cursor, and move the cursor to the slot in the same transaction.
    revision: int | None = None
    expected_cursor: datetime | None = None


@dataclass(frozen=True)
class SlotResult:
    created: bool  # False: the slot had been recorded already (by anyone)
    job_id: int | None
    stale: bool = False  # the guard failed: the revision or the cursor moved; nothing recorded


@dataclass(frozen=True)
class SlotRecord:
    schedule: str
    slot: datetime
    outcome: SlotOutcome
    job_id: int | None
    recorded_at: datetime
    updated_at: datetime
    note: str | None = None


@dataclass(frozen=True)
class LeaderState:
    leader_id: str | None
    term: int
    expires_at: datetime | None
    is_leader: bool


@dataclass(frozen=True)
class LeaseRow:
    key: str
    fence: int
    owner: str | None
    job_id: int | None
    acquired_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    hostname: str
    pid: int
    queues: tuple[str, ...] | None
    concurrency: int
    started_at: datetime
    tasks: tuple[str, ...] | None = None  # None: not recorded (any task)
    clock_offset: float | None = None  # seconds to add to its clock to read the store's


@dataclass(frozen=True)
class WorkerRow:
    worker_id: str
    hostname: str
    pid: int
    queues: tuple[str, ...] | None
    concurrency: int
    started_at: datetime
    last_seen_at: datetime
    declared: dict[str, str] | None = None  # schedule name -> hash of the definition it declares
    tasks: tuple[str, ...] | None = None
    clock_offset: float | None = None


MigrateResult = sql.MigrateResult
