"""The :class:`~oncely.store.base.Store` written once, against a
:class:`~oncely.store.dialect.Dialect`.

:class:`SQLStore` runs every operation in the dialect's transactions with the operations of
``store/ops`` (the same code for SQLite and PostgreSQL). A dialect's store subclasses it and
overrides only what truly differs between the two databases — the claim, the batch finish, lease
renewal, leader election, the fenced transaction, waiting for work and waking workers — and
names how a claim reads the controls' usage (:meth:`SQLStore.read_usage`). Schema migrations
run through :func:`oncely.sql.migrate` with the dialect as the ledger.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any, Generic, TypeVar

from oncely import sql
from oncely.store import migrations
from oncely.store.base import (
    LEADER_LEASE_KEY,
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
from oncely.store.controls import Control, ControlUpsert, ControlUsage
from oncely.store.dialect import Dialect
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
from oncely.store.ops import controls, jobs, observe, rescue, schedules
from oncely.store.rescue import JobRescue, LivenessHold, RescueOutcome
from oncely.store.rows import utc
from oncely.types import Job, JobState

D = TypeVar("D", bound=Dialect)


class SQLStore(ABC, Generic[D]):
    """Every store operation, run in the transactions of ``self.sql``."""

    def __init__(self, url: str, dialect: D) -> None:
        self.url = url
        self.sql = dialect
        self.dialect = dialect.name
        self.writes_take_turns = dialect.writes_take_turns

    def close(self) -> None:
        self.sql.close()

    # schema -----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        return self.sql.read(self.sql.version)

    def check_schema(self) -> None:
        migrations.require_current(self.schema_version(), self.dialect)

    def migrate(self, to: int | None = None) -> MigrateResult:
        """Bring the schema to version ``to`` (default: the newest): apply the missing
        migrations or run the down steps of newer ones, each in its own transaction; safe to
        run concurrently."""
        found = migrations.migrations_for(self.dialect)
        return sql.migrate(self.sql.write, self.sql, found, to=to)

    def migration_status(self) -> tuple[int, list[sql.MigrationStep]]:
        """The schema's version and every migration, applied or pending (reads only)."""
        return sql.status(self.sql.read, self.sql, migrations.migrations_for(self.dialect))

    # jobs -------------------------------------------------------------------------------------

    def job_insert(self, params: JobInsert, now: datetime, conn: Any = None) -> JobInsertResult:
        work = partial(jobs.insert_job, self.sql, params=params, now=now)
        if conn is not None:
            return self.sql.joined(conn, work)
        # The insert is one statement (ON CONFLICT DO NOTHING, its wake-up committed with it);
        # a conflict's follow-up reads need no transaction either: insert_job retries when the
        # job it conflicted with is gone by then.
        return self.sql.write_each(work)

    def job_insert_many(self, params: Sequence[JobInsert], now: datetime) -> list[JobInsertResult]:
        if not params:
            return []
        return self.sql.write(partial(jobs.insert_jobs, self.sql, params=params, now=now))

    def job_get(self, job_id: int) -> Job | None:
        return self.sql.read(partial(jobs.get_job, self.sql, job_id=job_id))

    def job_list(self, flt: JobFilter) -> list[Job]:
        return self.sql.read(partial(jobs.list_jobs, self.sql, flt=flt))

    def job_counts(self) -> list[QueueCount]:
        return self.sql.read(partial(jobs.count_jobs, self.sql))

    @abstractmethod
    def job_claim(self, params: JobClaimParams) -> ClaimResult: ...

    @abstractmethod
    def job_finish(self, params: JobFinish) -> bool: ...

    @abstractmethod
    def job_finish_many(self, params: Sequence[JobFinish]) -> list[bool]: ...

    def job_cancel(self, job_id: int, now: datetime, reason: str) -> Job:
        work = partial(jobs.cancel_job, self.sql, job_id=job_id, now=now, reason=reason)
        return self.sql.write(work)

    def job_retry(self, job_id: int, now: datetime) -> Job:
        return self.sql.write(partial(jobs.retry_job, self.sql, job_id=job_id, now=now))

    def job_expired(self, now: datetime, limit: int) -> list[Job]:
        return self.sql.read(partial(jobs.get_expired_jobs, self.sql, now=now, limit=limit))

    def job_checkpoint(self, job_id: int, fence: int, data: Any, now: datetime) -> bool:
        work = partial(jobs.checkpoint_job, self.sql, job_id=job_id, fence=fence, data=data,
                       now=now)
        return self.sql.write(work)

    def job_fence_current(self, job_id: int, fence: int, now: datetime) -> bool:
        """True while the fence is current and its lease unexpired at ``now``."""
        work = partial(jobs.fence_live, self.sql, job_id=job_id, fence=fence, now=now)
        return self.sql.read(work)

    def job_prune(self, params: PruneParams) -> int:
        return self.sql.write(partial(jobs.prune_jobs, self.sql, params=params))

    def job_retry_failed(self, params: RetryFailed) -> RetryFailedResult:
        return self.sql.write(partial(jobs.retry_failed, self.sql, params=params))

    def job_key_waiting(self, task: str, key: str) -> int:
        work = partial(jobs.key_waiting_manual_jobs, self.sql, task=task, key=key)
        return self.sql.write(work)

    def job_finished_queues(self) -> list[str]:
        return self.sql.read(partial(jobs.finished_queues, self.sql))

    def job_finished_cutoff(self, queue: str, state: JobState, keep: int) -> datetime | None:
        work = partial(jobs.finished_cutoff, self.sql, queue=queue, state=state, keep=keep)
        return self.sql.read(work)

    # queue controls ---------------------------------------------------------------------------

    def control_upsert(self, params: ControlUpsert) -> UpsertOutcome:
        return self.sql.write(partial(controls.upsert_control, self.sql, params=params))

    def control_list(self) -> list[Control]:
        return self.sql.read(partial(controls.list_controls, self.sql))

    def control_pause(self, queue: str, paused: bool, now: datetime) -> Control:
        """Claims that begin after this returns obey it."""
        work = partial(controls.pause_queue, self.sql, queue=queue, paused=paused, now=now)
        return self.sql.write(work)

    def control_usage(self, keys: Sequence[str] = ()) -> ControlUsage:
        def usage(conn: Any) -> ControlUsage:
            active = [c for c in controls.list_controls(self.sql, conn) if c.active]
            return self.read_usage(conn, active, keys)

        return self.sql.read(usage)

    @abstractmethod
    def read_usage(
        self, conn: Any, active: Sequence[Control], keys: Sequence[str] = (), depth: int = 1
    ) -> ControlUsage:
        """What the ``active`` controls (and the concurrency ``keys``) are measured against."""

    # leases -----------------------------------------------------------------------------------

    @abstractmethod
    def lease_renew(
        self, worker_id: str, now: datetime, ttl: float, leases: Sequence[LeaseRenewal]
    ) -> dict[int, RenewResult]: ...

    def lease_list(self) -> list[LeaseRow]:
        return self.sql.read(partial(schedules.list_leases, self.sql))

    @abstractmethod
    def leader_elect(self, worker_id: str, now: datetime, ttl: float) -> LeaderState: ...

    def leader_resign(self, worker_id: str, now: datetime) -> None:
        values = {"key": LEADER_LEASE_KEY, "owner": worker_id}
        self.sql.write(lambda conn: self.sql.execute(conn, "lease_resign", values))

    # schedules and slots ----------------------------------------------------------------------

    def schedule_upsert(self, params: ScheduleUpsert) -> UpsertOutcome:
        return self.sql.write(partial(schedules.upsert_schedule, self.sql, params=params))

    def schedule_list(self) -> list[ScheduleRow]:
        return self.sql.read(partial(schedules.list_schedules, self.sql))

    def schedule_get(self, name: str) -> ScheduleRow | None:
        return self.sql.read(partial(schedules.get_schedule, self.sql, name=name))

    def schedule_advance(
        self, name: str, expected_cursor: datetime | None, new_cursor: datetime,
        revision: int | None = None,
    ) -> bool:
        work = partial(schedules.advance_schedule, self.sql, name=name,
                       expected_cursor=expected_cursor, new_cursor=new_cursor, revision=revision)
        return self.sql.write(work)

    def schedule_pause(self, name: str, paused_at: datetime | None, reason: str | None) -> bool:
        work = partial(schedules.pause_schedule, self.sql, name=name, paused_at=paused_at,
                       reason=reason)
        return self.sql.write(work)

    def slot_run_unrun(self, params: SlotEnqueue) -> SlotResult:
        return self.sql.write(partial(schedules.run_unrun_slot, self.sql, params=params))

    def schedule_history(self, name: str, limit: int = 50) -> list[FleetEvent]:
        return self.sql.read(partial(schedules.schedule_history, self.sql, name=name,
                                     limit=limit))

    def schedule_delete(self, name: str) -> bool:
        return self.sql.write(partial(schedules.delete_schedule, self.sql, name=name))

    def slot_enqueue(self, params: SlotEnqueue) -> SlotResult:
        return self.sql.write(partial(schedules.enqueue_slot, self.sql, params=params))

    def ledger_list(
        self, schedule: str, limit: int = 50, before: datetime | None = None
    ) -> list[SlotRecord]:
        work = partial(schedules.list_ledger, self.sql, schedule=schedule, limit=limit,
                       before=before)
        return self.sql.read(work)

    # workers ----------------------------------------------------------------------------------

    def worker_register(self, info: WorkerInfo) -> None:
        self.sql.write(partial(schedules.register_worker, self.sql, info=info))

    def worker_declare(self, worker_id: str, declared: dict[str, str]) -> None:
        work = partial(schedules.declare_worker, self.sql, worker_id=worker_id, declared=declared)
        self.sql.write(work)

    def worker_heartbeat(
        self, worker_id: str, now: datetime, clock_offset: float | None = None
    ) -> None:
        work = partial(schedules.heartbeat_worker, self.sql, worker_id=worker_id, now=now,
                       clock_offset=clock_offset)
        self.sql.write(work)

    def server_time(self) -> datetime | None:
        """The database server's clock, or None where the callers' clock is the server's
        (SQLite: one machine)."""
        row = self.sql.read(lambda conn: self.sql.fetch_one(conn, "server_time"))
        return None if row is None or row["now"] is None else utc(row["now"])

    def worker_deregister(self, worker_id: str) -> None:
        self.sql.write(partial(schedules.deregister_worker, self.sql, worker_id=worker_id))

    def worker_list(self) -> list[WorkerRow]:
        return self.sql.read(partial(schedules.list_workers, self.sql))

    # rescue and liveness (oncely.store.rescue) ------------------------------------------------

    def job_rescue(self, params: JobRescue) -> RescueOutcome | None:
        return self.sql.write(partial(rescue.rescue_job, self.sql, params=params))

    def job_running_of(self, owner: str, limit: int = 200) -> list[Job]:
        return self.sql.read(partial(rescue.running_of, self.sql, owner=owner, limit=limit))

    def worker_owners_gone(self, worker_id: str) -> list[str]:
        return self.sql.read(partial(self.sql.owners_gone, worker_id=worker_id))

    def liveness_hold(self, worker_id: str) -> LivenessHold:
        hold = self.sql.liveness_lock(worker_id)
        if hold.token is None:
            return hold  # nothing to record: nothing can prove this worker gone
        try:
            self.sql.write(partial(rescue.set_liveness, self.sql, worker_id=worker_id,
                                   token=hold.token))
        except BaseException:
            hold.release()
            raise
        return hold

    # transactions and wake-ups ----------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        return self.sql.transaction()

    @abstractmethod
    def fenced_transaction(
        self, job_id: int, fence: int, now: datetime
    ) -> contextlib.AbstractContextManager[Any]: ...

    @abstractmethod
    def wait_for_work(self, timeout: float) -> bool: ...

    @abstractmethod
    def notify_work(self, queue: str) -> None: ...

    # observability (oncely.store.observability) -----------------------------------------------

    def execution_counts(self, window: ExecutionWindow) -> list[ExecutionCount]:
        return self.sql.read(partial(observe.execution_counts, self.sql, window=window))

    def execution_overlaps(self, task: str, since: datetime, until: datetime) -> int:
        work = partial(observe.execution_overlaps, self.sql, task=task, since=since, until=until)
        return self.sql.read(work)

    def execution_list(
        self, job_id: int | None = None, task: str | None = None, limit: int = 50
    ) -> list[Execution]:
        work = partial(observe.execution_list, self.sql, job_id=job_id, task=task, limit=limit)
        return self.sql.read(work)

    def execution_durations(self, task: str, limit: int = 50) -> list[float]:
        return self.sql.read(partial(observe.execution_durations, self.sql, task=task, limit=limit))

    def ledger_counts(
        self, since: datetime, until: datetime, schedule: str | None = None
    ) -> list[LedgerCount]:
        work = partial(observe.ledger_counts, self.sql, since=since, until=until,
                       schedule=schedule)
        return self.sql.read(work)

    def job_waiting(self, now: datetime) -> list[WaitingGroup]:
        return self.sql.read(partial(observe.job_waiting, self.sql, now=now))

    def event_record(self, params: FleetEventInsert) -> None:
        self.sql.write(partial(observe.event_record, self.sql, params=params))

    def event_counts(self, since: datetime) -> dict[str, int]:
        return self.sql.read(partial(observe.event_counts, self.sql, since=since))

    def event_list(self, name: str | None = None, limit: int = 50) -> list[FleetEvent]:
        return self.sql.read(partial(observe.event_list, self.sql, name=name, limit=limit))

    def anomaly_raise(self, params: AnomalyRaise) -> AnomalyRaiseResult:
        return self.sql.write(partial(observe.anomaly_raise, self.sql, params=params))

    def anomaly_list(self, open_only: bool = True, limit: int = 100) -> list[Anomaly]:
        work = partial(observe.anomaly_list, self.sql, open_only=open_only, limit=limit)
        return self.sql.read(work)

    def anomaly_get(self, anomaly_id: int) -> Anomaly | None:
        return self.sql.read(partial(observe.anomaly_get, self.sql, anomaly_id=anomaly_id))

    def anomaly_resolve(self, anomaly_id: int, now: datetime) -> bool:
        work = partial(observe.anomaly_resolve, self.sql, anomaly_id=anomaly_id, now=now)
        return self.sql.write(work)

    def observation_prune(self, before: datetime, limit: int = 1000) -> int:
        work = partial(observe.observation_prune, self.sql, before=before, limit=limit)
        return self.sql.write(work)
