"""The storage seam: every operation oncely performs on its database, typed and entity-first.

Drivers (:mod:`oncely.store.sqlite`, :mod:`oncely.store.postgres`, both the one
:class:`~oncely.store.sqlstore.SQLStore` on their dialect) implement :class:`Store`. Every method
takes and returns the frozen dataclasses of :mod:`oncely.store.params`; SQL lives only in the
dialects' named ``.sql`` files; every time-dependent operation takes ``now`` from the caller's
clock, so a frozen clock freezes time down into SQL. Driver exceptions are mapped to
:mod:`oncely.errors` at the seam.

Job state machine
=================

The transitions, the slot outcomes and the eligibility of human actions are a table in
:mod:`oncely.lifecycle` (drawn in its docstring); every operation here follows it.

* ``claim`` moves a job to ``running`` in one transaction that also sets ``attempt += 1``,
  ``lease_owner``, ``lease_expires_at = now + ttl`` and a new ``fence``.
* ``cancel`` ends a waiting job at once; on a running job it sets ``cancel_requested``, which the
  worker learns from its next lease renewal.
* ``retry`` (a human's) puts a failed, cancelled, retryable or scheduled job back to ``available``
  now, raising ``max_attempts`` so the job gets one more attempt.

Leases and fences
=================

Every running job holds a lease: ``lease_owner`` and ``lease_expires_at`` on its row. A job with a
``singleton_key`` must also hold the key's row in the lease table; that row carries the key's
**fence**, an integer that only grows::

    lease row:  free (owner NULL, or expires_at <= now) ──grant: fence += 1──► held
                held ──renew (same owner, same fence): expires_at = now + ttl──► held
                held ──finish / release / rescue of the job holding that fence──► free

* A singleton job is claimable only while its key's lease is free. Granting it and moving the job
  to ``running`` happen in the same transaction; the job's ``fence`` is the key's new fence.
  A job without a key gets ``fence = previous fence + 1`` on its own row.
* If a key's lease is held and the candidate is a scheduled slot on its first attempt whose
  ``overlap`` is ``skip``, the claim ends that job ``cancelled`` and its slot ``skipped_overlap``
  — unless the holder has missed a renewal (its lease runs out within a third of the TTL,
  :func:`oncely.store.rescue.holder_overdue`): then the candidate waits for the lease to run
  out. A rescued first run (its attempt given back) counts as a first run. With ``buffer_one``
  it waits. Retries always wait. ``allow`` jobs carry no singleton key.
* The fence of job J is **current** while J is ``running`` with that fence and, for a singleton
  job, the key's lease row still has that fence. ``finish`` and ``release`` apply only to a current
  fence, so a zombie (a worker paused past its lease whose job was taken over or rescued) cannot
  complete or retry its job. ``fenced_transaction`` additionally requires the lease unexpired.
* ``lease_renew`` succeeds only for a current fence with the same owner; a worker that cannot renew
  before its own monotonic deadline stops the job itself (self-fencing).
* One clock judges leases. Every lease operation takes ``now`` from its caller; on PostgreSQL a
  worker's ``now`` is the server's clock (each worker measures its offset to
  ``clock_timestamp()`` at start and on every heartbeat and corrects its clock, see
  :mod:`oncely.worker.serverclock`), so a machine whose clock is wrong neither takes over nor
  loses a live lease. SQLite runs on one machine: its processes share that machine's clock.
* A claim takes only jobs of the tasks the claimer has (``JobClaimParams.tasks``), and first
  judges the due waiting slot jobs by the policies they carry (:mod:`oncely.store.ops.claimpolicy`).
* ``job_expired`` lists running jobs whose lease has expired, ``worker_owners_gone`` the owners
  whose liveness lock is free; the rescuer then calls ``job_rescue``, which re-checks expiry (or
  the owner) inside the transaction so a renewal that won the race keeps the job.

Slots
=====

``(schedule, slot)`` is unique in the slot ledger. ``slot_enqueue`` inserts the ledger row and its
job in one transaction, doing nothing if the row exists: a slot becomes a job at most once, whoever
enqueues it. A job that belongs to a slot updates its ledger row when it finishes: ``ran`` on
success, ``failed`` on final failure, ``skipped_overlap`` when the claim skipped it; ``cancelled``
by a human leaves ``failed`` with a note.

Queue controls
==============

A control (one row of ``oncely_controls``, see :mod:`oncely.store.controls`) limits a queue or a
task for the whole fleet. Workers upsert the controls their app declares when they start
(``control_upsert``, which never touches ``paused``); ``control_pause`` pauses and resumes a
queue. A claim enforces them inside its own transaction:

* **paused** (queue): the claim starts no job of the queue; jobs already running finish.
* **max_running = N** (queue): the claim counts the queue's running jobs and starts at most N
  minus that many.
* **max_per_key = N** (task): every job of the task carries a ``concurrency_key`` (the task name,
  ``/``, the task's key template formatted from the job's args at enqueue); the claim starts a job
  only while fewer than N running jobs carry the same key.
* **rate limit n per w seconds** (queue or task): the scope keeps a ring of its last n starts
  (``oncely_starts``; start number k in slot ``k mod n``, ``rate_seq`` on the control row counts
  them). The claim starts the scope's next job at its ``now`` only if the start n places earlier
  — the entry in that slot — is empty or was logged at or before ``now - w``; it logs its starts
  in their slots. It reads as many entries as it could start jobs, never the whole window. A
  changed limit starts from an empty ring.
* A job held back by a control is not touched: it stays waiting, in its place. The claim reports
  each exhausted scope with its reason and, for a rate limit, the instant it allows a start again
  (``ClaimResult.waits``); workers sleep until then instead of a whole poll interval. Controls
  only withhold starts; an overlap skip still happens (it starts nothing, so it uses no room).

Atomicity. SQLite: the claim holds the write lock (``BEGIN IMMEDIATE``) while it counts and
starts. PostgreSQL: a claim that may start jobs of limited queues or tasks first locks their
control rows ``FOR UPDATE`` (sorted, before any job row), so claimers of a limited scope take
turns and each counts what the previous one committed; jobs outside every limited scope are
claimed by the usual ``SKIP LOCKED`` statements, which leave limited queues and tasks out. Every
claim holds a shared advisory lock that ``control_upsert`` and ``control_pause`` take
exclusively, and reads the controls only after the lock is granted, with a snapshot taken then
(a statement that waited for the lock would see the controls as they were before it waited): once
a pause (or a new limit) has committed, no claim that began before it can still start jobs under
the old rules.

Precision of the rate limit: exact against the claimers' clocks — in every window ``(t - w, t]``
of logged start instants at most n jobs start, whatever order the claims commit in (a claim reads
``now`` before it waits for the lock). Why: every start is at least w later than the start n
places before it in the log, so the log is n interleaved chains whose steps are each at least w,
and a half-open window of length w holds at most one start of each chain. Workers on several
machines whose clocks differ by up to d seconds start at most n jobs in any real-time interval of
``w - d``. A start is the claim; the handler begins a few milliseconds later.

Dead letters and retention
==========================

A job that failed for good stays ``failed`` with its whole error history until retention removes
it; ``job_retry`` (one) and ``job_retry_failed`` (a queue's or task's failed jobs, in batches)
make it available again with one more attempt. Retention is per queue and finished state, by age
and by count: the pruner asks ``job_finished_cutoff`` for the ``finished_at`` of the oldest job
the count keeps, and deletes, a small batch per transaction, what finished before that or
before the age limit (``job_prune`` with ``queue`` and ``finished_before``).

Leader
======

The leader is the holder of the lease row ``@leader``; its fence is the leader's **term**. The key
starts with ``@``, which no task name — and so no singleton or concurrency key — can start with:
a task may be called ``leader`` without meeting the leader's row.
``leader_elect`` grants the row if it is free or expired, renews it if the caller holds it, and
otherwise reports who does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from oncely import sql
from oncely.store.controls import Control, ControlUpsert, ControlUsage
from oncely.store.observability import (
    Anomaly,
    AnomalyRaise,
    AnomalyRaiseResult,
    Execution,
    ExecutionCount,
    ExecutionWindow,
    FleetEvent,
    FleetEventInsert,
    LedgerCount,
    WaitingGroup,
)

# The parameter dataclasses live in oncely.store.params. They are named here too because they
# are the seam's vocabulary: the engine's modules import them together with the Store they are
# passed to. The domain types (Job, JobState, …) are not: import them from oncely.types.
from oncely.store.params import (
    ClaimResult,
    JobClaimParams,
    JobFilter,
    JobFinish,
    JobInsert,
    JobInsertResult,
    LeaderState,
    LeaseRenewal,
    LeaseRow,
    MigrateResult,
    PruneParams,
    QueueCount,
    RenewResult,
    RetryFailed,
    RetryFailedResult,
    ScheduleRow,
    ScheduleUpsert,
    SlotEnqueue,
    SlotRecord,
    SlotResult,
    UpsertOutcome,
    WorkerInfo,
    WorkerRow,
)
from oncely.types import Job, JobState

__all__ = [
    "LEADER_LEASE_KEY",
    "ClaimResult",
    "JobClaimParams",
    "JobFilter",
    "JobFinish",
    "JobInsert",
    "JobInsertResult",
    "LeaderState",
    "LeaseRenewal",
    "LeaseRow",
    "MigrateResult",
    "PruneParams",
    "QueueCount",
    "RenewResult",
    "RetryFailed",
    "RetryFailedResult",
    "ScheduleRow",
    "ScheduleUpsert",
    "SlotEnqueue",
    "SlotRecord",
    "SlotResult",
    "Store",
    "UpsertOutcome",
    "WorkerInfo",
    "WorkerRow",
    "iter_chunks",
]

if TYPE_CHECKING:
    from oncely.store.rescue import JobRescue, LivenessHold, RescueOutcome

# Internal lease keys start with "@": every singleton or concurrency key starts with a task name,
# and task names never do (tasks.check_name), so no task can reach them.
LEADER_LEASE_KEY = "@leader"



class Store(Protocol):
    """What every storage backend implements. See the module docstring for the semantics."""

    url: str
    dialect: str  # "sqlite" | "postgresql"
    # One write transaction at a time on the whole database (SQLite): a worker gains nothing by
    # claiming while its outcomes are being written (see oncely.worker.claimer).
    writes_take_turns: bool

    # schema ------------------------------------------------------------------------------
    def migrate(self, to: int | None = None) -> MigrateResult: ...
    def migration_status(self) -> tuple[int, list[sql.MigrationStep]]: ...
    def schema_version(self) -> int: ...
    def check_schema(self) -> None:
        """Raise SchemaMismatch unless the schema is exactly current."""
    def close(self) -> None: ...

    # jobs --------------------------------------------------------------------------------
    def job_insert(self, params: JobInsert, now: datetime, conn: Any = None) -> JobInsertResult:
        """Insert one job; with ``conn`` (a connection from :meth:`transaction`), inside the
        caller's transaction, so the job commits or rolls back with the caller's own writes."""
    def job_insert_many(
        self, params: Sequence[JobInsert], now: datetime
    ) -> list[JobInsertResult]: ...
    def job_get(self, job_id: int) -> Job | None: ...
    def job_list(self, flt: JobFilter) -> list[Job]: ...
    def job_counts(self) -> list[QueueCount]: ...
    def job_claim(self, params: JobClaimParams) -> ClaimResult: ...
    def job_finish(self, params: JobFinish) -> bool:
        """Apply a fenced transition; False when the fence is no longer current."""
    def job_finish_many(self, params: Sequence[JobFinish]) -> list[bool]:
        """Apply several fenced transitions in one transaction, each checked on its own. A
        success (no error, no refund) of an attempt already recorded as that success counts
        as applied: only a retry of the same call, whose first reply was lost, sends it."""
    def job_cancel(self, job_id: int, now: datetime, reason: str) -> Job:
        """Cancel a waiting job or request cancellation of a running one. NotFound if absent."""
    def job_retry(self, job_id: int, now: datetime) -> Job:
        """Make a failed/cancelled/retryable/scheduled job available now. NotFound if absent."""
    def job_expired(self, now: datetime, limit: int) -> list[Job]: ...
    def job_checkpoint(self, job_id: int, fence: int, data: Any, now: datetime) -> bool: ...
    def job_fence_current(self, job_id: int, fence: int, now: datetime) -> bool: ...
    def job_prune(self, params: PruneParams) -> int: ...
    def job_retry_failed(self, params: RetryFailed) -> RetryFailedResult:
        """Retry one batch of failed jobs, each as ``job_retry`` would, in one transaction."""
    def job_key_waiting(self, task: str, key: str) -> int:
        """Give singleton key ``key`` to every waiting (scheduled, available or retryable)
        manual job of ``task`` that has none — when a schedule of the task is stored, the jobs
        enqueued before it was known take the key its runs hold. Returns how many took it."""
    def job_finished_queues(self) -> list[str]:
        """Queues that have finished (succeeded, failed or cancelled) jobs."""
    def job_finished_cutoff(self, queue: str, state: JobState, keep: int) -> datetime | None:
        """``finished_at`` of the ``keep``-th newest job of ``queue`` in ``state`` (``keep`` >=
        1; None when there are fewer): the jobs that finished before it are beyond the count."""

    # queue controls ----------------------------------------------------------------------
    def control_upsert(self, params: ControlUpsert) -> UpsertOutcome:
        """Declare a queue's or task's limits (never its ``paused`` flag)."""
    def control_list(self) -> list[Control]: ...
    def control_pause(self, queue: str, paused: bool, now: datetime) -> Control:
        """Pause or resume a queue; claims that begin after this returns obey it."""
    def control_usage(self, keys: Sequence[str] = ()) -> ControlUsage:
        """What a claim counts against the active controls: running jobs per limited queue and
        per key (the limited tasks' keys and ``keys``), and the rate rings' next entries."""

    # leases ------------------------------------------------------------------------------
    def lease_renew(
        self, worker_id: str, now: datetime, ttl: float, leases: Sequence[LeaseRenewal]
    ) -> dict[int, RenewResult]: ...
    def lease_list(self) -> list[LeaseRow]: ...
    def leader_elect(self, worker_id: str, now: datetime, ttl: float) -> LeaderState: ...
    def leader_resign(self, worker_id: str, now: datetime) -> None: ...

    # schedules and slots -----------------------------------------------------------------
    def schedule_upsert(self, params: ScheduleUpsert) -> UpsertOutcome: ...
    def schedule_list(self) -> list[ScheduleRow]: ...
    def schedule_get(self, name: str) -> ScheduleRow | None: ...
    def schedule_advance(
        self, name: str, expected_cursor: datetime | None, new_cursor: datetime,
        revision: int | None = None,
    ) -> bool:
        """Compare-and-set the schedule's cursor (and, given, its revision); False if another
        enqueuer moved it first or the definition was revised."""
    def schedule_pause(self, name: str, paused_at: datetime | None, reason: str | None) -> bool:
        """Pause (``paused_at`` set) or resume (None) a schedule; False if it does not exist."""
    def schedule_delete(self, name: str) -> bool: ...
    def slot_enqueue(self, params: SlotEnqueue) -> SlotResult:
        """Record a slot at most once (with its job); with ``revision`` set, only while the
        schedule is at that revision and cursor, moving the cursor to the slot."""
    def slot_run_unrun(self, params: SlotEnqueue) -> SlotResult:
        """Give a slot recorded ``paused`` or ``missed`` its job (resume's catch-up, a
        backfill), at most once."""
    def schedule_history(self, name: str, limit: int = 50) -> list[FleetEvent]:
        """The recorded events of a schedule (revisions, operators' actions), newest first."""
    def ledger_list(
        self, schedule: str, limit: int = 50, before: datetime | None = None
    ) -> list[SlotRecord]: ...

    # workers -----------------------------------------------------------------------------
    def worker_register(self, info: WorkerInfo) -> None: ...
    def worker_declare(self, worker_id: str, declared: dict[str, str]) -> None:
        """Record the hash of each schedule this worker's code declares."""
    def worker_heartbeat(
        self, worker_id: str, now: datetime, clock_offset: float | None = None
    ) -> None: ...
    def server_time(self) -> datetime | None:
        """The server's clock (PostgreSQL), or None when callers share one clock (SQLite)."""
    def worker_deregister(self, worker_id: str) -> None: ...
    def worker_list(self) -> list[WorkerRow]: ...

    # rescue and liveness (see oncely.store.rescue) ---------------------------------------
    def job_rescue(self, params: JobRescue) -> RescueOutcome | None:
        """Rescue a running job whose lease expired or whose owner is gone; None when the job
        moved on (renewed, finished, claimed again)."""
    def job_running_of(self, owner: str, limit: int = 200) -> list[Job]: ...
    def worker_owners_gone(self, worker_id: str) -> list[str]:
        """Owners (other than ``worker_id``) of running jobs whose liveness lock is free."""
    def liveness_hold(self, worker_id: str) -> LivenessHold:
        """Take the worker's liveness lock and record it in its (registered) worker row."""

    # transactions and wake-ups -----------------------------------------------------------
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A DB-API connection inside a transaction that commits on exit (rolls back on error)."""
    def fenced_transaction(
        self, job_id: int, fence: int, now: datetime
    ) -> contextlib.AbstractContextManager[Any]:
        """Like :meth:`transaction`, but first verifies (and locks) the job's fence: raises
        FenceRejected unless the fence is current and its lease unexpired at ``now``. The lock
        keeps the fence current until the transaction ends."""
    def wait_for_work(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; return True early when new work may be available."""
    def notify_work(self, queue: str) -> None:
        """Wake idle workers (no-op where wake-ups are implicit)."""

    # observability (executions, fleet events, anomalies; see oncely.store.observability) -----
    def execution_counts(self, window: ExecutionWindow) -> list[ExecutionCount]:
        """Attempts started in ``(since, until]`` per task, queue, schedule (and bucket)."""
    def execution_overlaps(self, task: str, since: datetime, until: datetime) -> int:
        """Attempts of ``task`` started in ``(since, until]`` while another attempt of the same
        task was running (started earlier, at most one window length before ``since``, and not
        ended by then)."""
    def execution_list(
        self, job_id: int | None = None, task: str | None = None, limit: int = 50
    ) -> list[Execution]:
        """Recorded attempts, newest first."""
    def execution_durations(self, task: str, limit: int = 50) -> list[float]:
        """Seconds taken by the newest ``limit`` attempts of ``task`` that succeeded."""
    def ledger_counts(
        self, since: datetime, until: datetime, schedule: str | None = None
    ) -> list[LedgerCount]:
        """Slot outcomes per schedule for slots in ``(since, until]``."""
    def job_waiting(self, now: datetime) -> list[WaitingGroup]:
        """Due waiting jobs per queue and task, with the oldest ``run_at``."""
    def event_record(self, params: FleetEventInsert) -> None: ...
    def event_counts(self, since: datetime) -> dict[str, int]:
        """Fleet events per name at or after ``since``."""
    def event_list(self, name: str | None = None, limit: int = 50) -> list[FleetEvent]: ...
    def anomaly_raise(self, params: AnomalyRaise) -> AnomalyRaiseResult:
        """Open an anomaly, or update the open one of the same kind and subject."""
    def anomaly_list(self, open_only: bool = True, limit: int = 100) -> list[Anomaly]:
        """Newest first (by last_seen_at)."""
    def anomaly_get(self, anomaly_id: int) -> Anomaly | None: ...
    def anomaly_resolve(self, anomaly_id: int, now: datetime) -> bool:
        """Close an open anomaly; False if it is unknown or already resolved."""
    def observation_prune(self, before: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` executions started, events recorded and anomalies resolved
        before ``before`` (each); returns how many rows went."""


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
