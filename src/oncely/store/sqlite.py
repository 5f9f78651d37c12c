"""The embedded store: one SQLite file shared by any number of local processes (WAL mode).

:class:`SQLiteStore` implements :class:`oncely.store.base.Store`. Every write is one
``BEGIN IMMEDIATE`` transaction: SQLite then holds its single write lock for the whole claim,
finish or enqueue, which is what makes them atomic across processes. Contention is absorbed by a
bounded, jittered retry (:class:`~oncely.errors.StoreBusy` after about 30 s). The operations live
in ``_sqlite_jobs``, ``_sqlite_claim`` and ``_sqlite_schedules``; connections and error mapping in
``_sqlite_engine``; the SQL in ``store/sql/sqlite/*.sql``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from oncely.errors import FenceRejected, SchemaMismatch
from oncely.store import _sqlite_claim as claim
from oncely.store import _sqlite_controls as controls
from oncely.store import _sqlite_jobs as jobs
from oncely.store import _sqlite_observe as observe
from oncely.store import _sqlite_schedules as schedules
from oncely.store._sqlite_engine import BUSY_BUDGET, Engine, parse_url, split_script
from oncely.store.base import (
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
from oncely.store.limits import Control, ControlUpsert, ControlUsage
from oncely.store.migrations import Migration, latest_version, migrations_for
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
from oncely.types import Job, JobState

DIALECT = "sqlite"
Q = jobs.Q


class SQLiteStore:
    """The :class:`~oncely.store.base.Store` on a SQLite database named by a ``sqlite://`` URL."""

    dialect = DIALECT

    def __init__(self, url: str, *, busy_budget: float = BUSY_BUDGET) -> None:
        self.url = url
        self._engine = Engine(parse_url(url), busy_budget)
        self.path = self._engine.path

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    def close(self) -> None:
        self._engine.close()

    # schema -----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        return self._engine.read(_schema_version)

    def check_schema(self) -> None:
        found, needed = self.schema_version(), latest_version(DIALECT)
        if found < needed:
            raise SchemaMismatch(
                f"database schema is version {found}, this oncely needs {needed}: "
                "run `oncely migrate`"
            )
        if found > needed:
            raise SchemaMismatch(_newer_message(found, needed))

    def migrate(self) -> MigrateResult:
        """Apply the missing migrations, each in its own transaction; safe to run concurrently."""
        before = self.schema_version()
        needed = latest_version(DIALECT)
        if before > needed:
            raise SchemaMismatch(_newer_message(before, needed))
        self._engine.write(lambda conn: conn.execute(Q["migrations_create_table"]))
        applied: list[str] = []
        for migration in migrations_for(DIALECT):
            if migration.version <= before:
                continue
            if self._engine.write(functools.partial(_apply, migration=migration)):
                applied.append(f"{migration.version:04d}_{migration.name}")
        return MigrateResult(before, self.schema_version(), tuple(applied))

    # jobs -------------------------------------------------------------------------------------

    def job_insert(self, params: JobInsert, now: datetime, conn: Any = None) -> JobInsertResult:
        if conn is not None:
            with self._engine.joined(conn):
                return jobs.insert_job(conn, params, now)
        return self._engine.write(lambda c: jobs.insert_job(c, params, now))

    def job_insert_many(self, params: Sequence[JobInsert], now: datetime) -> list[JobInsertResult]:
        if not params:
            return []
        return self._engine.write(lambda conn: jobs.insert_jobs(conn, params, now))

    def job_get(self, job_id: int) -> Job | None:
        return self._engine.read(lambda conn: jobs.get_job(conn, job_id))

    def job_list(self, flt: JobFilter) -> list[Job]:
        return self._engine.read(lambda conn: jobs.list_jobs(conn, flt))

    def job_counts(self) -> list[QueueCount]:
        return self._engine.read(jobs.count_jobs)

    def job_claim(self, params: JobClaimParams) -> ClaimResult:
        return self._engine.write(lambda conn: claim.claim_jobs(conn, params))

    def job_finish(self, params: JobFinish) -> bool:
        return self._engine.write(lambda conn: claim.finish_job(conn, params))

    def job_finish_many(self, params: Sequence[JobFinish]) -> list[bool]:
        return self._engine.write(lambda conn: [claim.finish_job(conn, item) for item in params])

    def job_cancel(self, job_id: int, now: datetime, reason: str) -> Job:
        return self._engine.write(lambda conn: jobs.cancel_job(conn, job_id, now, reason))

    def job_retry(self, job_id: int, now: datetime) -> Job:
        return self._engine.write(lambda conn: jobs.retry_job(conn, job_id, now))

    def job_expired(self, now: datetime, limit: int) -> list[Job]:
        return self._engine.read(lambda conn: jobs.expired_jobs(conn, now, limit))

    def job_checkpoint(self, job_id: int, fence: int, data: Any, now: datetime) -> bool:
        return self._engine.write(lambda conn: jobs.checkpoint_job(conn, job_id, fence, data, now))

    def job_fence_current(self, job_id: int, fence: int, now: datetime) -> bool:
        """True while the fence is current and its lease unexpired at ``now``."""
        return self._engine.read(lambda conn: jobs.fence_live(conn, job_id, fence, now))

    def job_prune(self, params: PruneParams) -> int:
        return self._engine.write(lambda conn: jobs.prune_jobs(conn, params))

    def job_retry_failed(self, params: RetryFailed) -> RetryFailedResult:
        return self._engine.write(lambda conn: controls.retry_failed(conn, params))

    def job_finished_queues(self) -> list[str]:
        return self._engine.read(controls.finished_queues)

    def job_finished_cutoff(self, queue: str, state: JobState, keep: int) -> datetime | None:
        return self._engine.read(lambda conn: controls.finished_cutoff(conn, queue, state, keep))

    # queue controls ---------------------------------------------------------------------------

    def control_upsert(self, params: ControlUpsert) -> UpsertOutcome:
        return self._engine.write(lambda conn: controls.upsert_control(conn, params))

    def control_list(self) -> list[Control]:
        return self._engine.read(controls.list_controls)

    def control_pause(self, queue: str, paused: bool, now: datetime) -> Control:
        return self._engine.write(lambda conn: controls.pause_queue(conn, queue, paused, now))

    def control_usage(self, keys: Sequence[str] = ()) -> ControlUsage:
        def usage(conn: Any) -> ControlUsage:
            active = [c for c in controls.list_controls(conn) if c.active]
            return controls.read_usage(conn, active, keys)

        return self._engine.read(usage)

    # leases -----------------------------------------------------------------------------------

    def lease_renew(
        self, worker_id: str, now: datetime, ttl: float, leases: Sequence[LeaseRenewal]
    ) -> dict[int, RenewResult]:
        if not leases:
            return {}
        return self._engine.write(
            lambda conn: claim.renew_leases(conn, worker_id, now, ttl, leases)
        )

    def lease_list(self) -> list[LeaseRow]:
        return self._engine.read(claim.list_leases)

    def leader_elect(self, worker_id: str, now: datetime, ttl: float) -> LeaderState:
        return self._engine.write(lambda conn: claim.elect_leader(conn, worker_id, now, ttl))

    def leader_resign(self, worker_id: str, now: datetime) -> None:
        self._engine.write(lambda conn: claim.resign_leader(conn, worker_id))

    # schedules and slots ----------------------------------------------------------------------

    def schedule_upsert(self, params: ScheduleUpsert) -> UpsertOutcome:
        return self._engine.write(lambda conn: schedules.upsert_schedule(conn, params))

    def schedule_list(self) -> list[ScheduleRow]:
        return self._engine.read(schedules.list_schedules)

    def schedule_get(self, name: str) -> ScheduleRow | None:
        return self._engine.read(lambda conn: schedules.get_schedule(conn, name))

    def schedule_advance(
        self, name: str, expected_cursor: datetime | None, new_cursor: datetime
    ) -> bool:
        return self._engine.write(
            lambda conn: schedules.advance_schedule(conn, name, expected_cursor, new_cursor)
        )

    def schedule_delete(self, name: str) -> bool:
        return self._engine.write(lambda conn: schedules.delete_schedule(conn, name))

    def slot_enqueue(self, params: SlotEnqueue) -> SlotResult:
        return self._engine.write(lambda conn: schedules.enqueue_slot(conn, params))

    def ledger_list(
        self, schedule: str, limit: int = 50, before: datetime | None = None
    ) -> list[SlotRecord]:
        return self._engine.read(lambda conn: schedules.list_ledger(conn, schedule, limit, before))

    # workers ----------------------------------------------------------------------------------

    def worker_register(self, info: WorkerInfo) -> None:
        self._engine.write(lambda conn: schedules.register_worker(conn, info))

    def worker_heartbeat(self, worker_id: str, now: datetime) -> None:
        self._engine.write(lambda conn: schedules.heartbeat_worker(conn, worker_id, now))

    def worker_deregister(self, worker_id: str) -> None:
        self._engine.write(lambda conn: schedules.deregister_worker(conn, worker_id))

    def worker_list(self) -> list[WorkerRow]:
        return self._engine.read(schedules.list_workers)

    # transactions and wake-ups ----------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        return self._engine.transaction()

    @contextlib.contextmanager
    def fenced_transaction(self, job_id: int, fence: int, now: datetime) -> Iterator[Any]:
        """A write transaction that first checks the fence; SQLite's write lock, held until
        commit, keeps the fence current for the rest of it."""
        with self._engine.transaction() as conn:
            with self._engine.joined(conn):
                live = jobs.fence_live(conn, job_id, fence, now)
            if not live:
                raise FenceRejected(job_id, fence)
            yield conn

    def wait_for_work(self, timeout: float) -> bool:
        return self._engine.wait_for_change(timeout)

    def notify_work(self, queue: str) -> None:
        """Nothing to do: any commit is visible to waiting workers through ``data_version``."""

    # observability (oncely.store.observability; SQL in observe.sql) -------------------------

    def execution_counts(self, window: ExecutionWindow) -> list[ExecutionCount]:
        return self._engine.read(lambda conn: observe.execution_counts(conn, window))

    def execution_overlaps(self, task: str, since: datetime, until: datetime) -> int:
        return self._engine.read(lambda conn: observe.execution_overlaps(conn, task, since, until))

    def execution_list(
        self, job_id: int | None = None, task: str | None = None, limit: int = 50
    ) -> list[Execution]:
        return self._engine.read(lambda conn: observe.execution_list(conn, job_id, task, limit))

    def execution_durations(self, task: str, limit: int = 50) -> list[float]:
        return self._engine.read(lambda conn: observe.execution_durations(conn, task, limit))

    def ledger_counts(
        self, since: datetime, until: datetime, schedule: str | None = None
    ) -> list[LedgerCount]:
        return self._engine.read(lambda conn: observe.ledger_counts(conn, since, until, schedule))

    def job_waiting(self, now: datetime) -> list[WaitingGroup]:
        return self._engine.read(lambda conn: observe.job_waiting(conn, now))

    def event_record(self, params: FleetEventInsert) -> None:
        self._engine.write(lambda conn: observe.event_record(conn, params))

    def event_counts(self, since: datetime) -> dict[str, int]:
        return self._engine.read(lambda conn: observe.event_counts(conn, since))

    def event_list(self, name: str | None = None, limit: int = 50) -> list[FleetEvent]:
        return self._engine.read(lambda conn: observe.event_list(conn, name, limit))

    def anomaly_raise(self, params: AnomalyRaise) -> AnomalyRaiseResult:
        return self._engine.write(lambda conn: observe.anomaly_raise(conn, params))

    def anomaly_list(self, open_only: bool = True, limit: int = 100) -> list[Anomaly]:
        return self._engine.read(lambda conn: observe.anomaly_list(conn, open_only, limit))

    def anomaly_get(self, anomaly_id: int) -> Anomaly | None:
        return self._engine.read(lambda conn: observe.anomaly_get(conn, anomaly_id))

    def anomaly_resolve(self, anomaly_id: int, now: datetime) -> bool:
        return self._engine.write(lambda conn: observe.anomaly_resolve(conn, anomaly_id, now))

    def observation_prune(self, before: datetime, limit: int = 1000) -> int:
        return self._engine.write(lambda conn: observe.observation_prune(conn, before, limit))


def _schema_version(conn: Any) -> int:
    if not conn.execute(Q["migrations_table_exists"]).fetchone()[0]:
        return 0
    return int(conn.execute(Q["migrations_current_version"]).fetchone()[0])


def _apply(conn: Any, migration: Migration) -> bool:
    # Another process may have applied it since we looked: re-check under the write lock.
    if _schema_version(conn) >= migration.version:
        return False
    for statement in split_script(migration.sql):
        conn.execute(statement)
    values = {"version": migration.version, "name": migration.name, "applied_at": time.time()}
    conn.execute(Q["migrations_record"], values)
    return True


def _newer_message(found: int, needed: int) -> str:
    return f"database schema is version {found}, newer than this oncely ({needed}); upgrade oncely"
