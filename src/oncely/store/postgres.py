"""The scale-out store: workers on many machines share one PostgreSQL database.

:class:`PostgresStore` implements :class:`oncely.store.base.Store` with psycopg 3 and a
``psycopg_pool`` connection pool. The URL is ``postgresql://user@host:port/db`` with two optional
parameters of oncely's own: ``schema=name`` (the schema holding oncely's tables, created by
:meth:`~PostgresStore.migrate`; default ``public``) so several apps can share one database, and
``pool_max=N`` (connections per store, default 10). Every other parameter goes to libpq.
Sessions run in UTC with ``idle_in_transaction_session_timeout`` at 10 s, so a worker paused in
the middle of a transaction cannot hold rows the fleet needs for longer (a URL
``options=-c idle_in_transaction_session_timeout=…`` overrides it).

Claims lock rows with ``FOR UPDATE SKIP LOCKED`` and skip lease rows others hold, so claimers
never wait for one another; every writer locks a job row before a lease row, so they cannot
deadlock. Idle workers sleep in ``LISTEN oncely_jobs`` and wake when an enqueue, retry or
retryable finish commits. The operations live in ``_pg_jobs``, ``_pg_claim`` and
``_pg_schedules``; pool and errors in ``_pg_engine``; LISTEN in ``_pg_listen``; the SQL in
``store/sql/postgres/*.sql``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from oncely.errors import FenceRejected, SchemaMismatch
from oncely.store import _pg_claim as claim
from oncely.store import _pg_controls as controls
from oncely.store import _pg_jobs as jobs
from oncely.store import _pg_observe as observe
from oncely.store import _pg_schedules as schedules
from oncely.store._pg_engine import Conn, Engine, Q, parse_url
from oncely.store._pg_listen import Listener
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

DIALECT = "postgresql"
MIGRATIONS = "postgres"  # the folder name under store/migrations


class PostgresStore:
    """The :class:`~oncely.store.base.Store` on the PostgreSQL database a URL names.

    Nothing connects until the first operation, which fails fast with
    :class:`~oncely.errors.StoreUnavailable` when the server cannot be reached.
    """

    dialect = DIALECT

    def __init__(self, url: str) -> None:
        self.url = url
        self.target = parse_url(url)
        self.schema = self.target.schema
        self._engine = Engine(self.target)
        self._listener = Listener(self.target)

    def __repr__(self) -> str:
        return f"PostgresStore({self.target.where!r}, schema={self.schema!r})"

    def close(self) -> None:
        self._listener.close()
        self._engine.close()

    # schema -----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        return self._engine.run(_schema_version)

    def check_schema(self) -> None:
        found, needed = self.schema_version(), latest_version(MIGRATIONS)
        if found < needed:
            raise SchemaMismatch(
                f"database schema is version {found}, this oncely needs {needed}: "
                "run `oncely migrate`"
            )
        if found > needed:
            raise SchemaMismatch(_newer_message(found, needed))

    def migrate(self) -> MigrateResult:
        """Create the schema if needed and apply the missing migrations, each in its own
        transaction under an advisory lock, so concurrent migrators take turns."""
        before = self._engine.run(functools.partial(_prepare, schema=self.schema))
        needed = latest_version(MIGRATIONS)
        if before > needed:
            raise SchemaMismatch(_newer_message(before, needed))
        applied: list[str] = []
        for migration in migrations_for(MIGRATIONS):
            if migration.version <= before:
                continue
            apply = functools.partial(_apply, migration=migration, schema=self.schema)
            if self._engine.run(apply):
                applied.append(f"{migration.version:04d}_{migration.name}")
        return MigrateResult(before, self.schema_version(), tuple(applied))

    # jobs -------------------------------------------------------------------------------------

    def job_insert(self, params: JobInsert, now: datetime, conn: Any = None) -> JobInsertResult:
        if conn is not None:
            return self._engine.joined(conn, lambda c: jobs.insert_job(c, params, now))
        return self._engine.run(lambda c: jobs.insert_job(c, params, now))

    def job_insert_many(self, params: Sequence[JobInsert], now: datetime) -> list[JobInsertResult]:
        if not params:
            return []
        return self._engine.run(lambda conn: jobs.insert_jobs(conn, params, now))

    def job_get(self, job_id: int) -> Job | None:
        return self._engine.run(lambda conn: jobs.get_job(conn, job_id))

    def job_list(self, flt: JobFilter) -> list[Job]:
        return self._engine.run(lambda conn: jobs.list_jobs(conn, flt))

    def job_counts(self) -> list[QueueCount]:
        return self._engine.run(jobs.count_jobs)

    def job_claim(self, params: JobClaimParams) -> ClaimResult:
        fast = self._engine.run(lambda conn: claim.claim_fast(conn, params), autocommit=True)
        if fast is not None:
            return fast
        return self._engine.run(lambda conn: claim.claim_jobs(conn, params))

    def job_finish(self, params: JobFinish) -> bool:
        return self._engine.run(lambda conn: claim.finish_job(conn, params))

    def job_finish_many(self, params: Sequence[JobFinish]) -> list[bool]:
        # Plain successes first, in one statement of their own (one round trip); the rest, and
        # any it did not take, in one transaction.
        plain = [p for p in params if claim.is_plain_success(p)]
        done = (self._engine.run(lambda conn: claim.finish_plain(conn, plain), autocommit=True)
                if plain else set())
        if len(done) == len(params):
            return [True] * len(params)
        return self._engine.run(lambda conn: claim.finish_jobs(conn, params, done))

    def job_cancel(self, job_id: int, now: datetime, reason: str) -> Job:
        return self._engine.run(lambda conn: jobs.cancel_job(conn, job_id, now, reason))

    def job_retry(self, job_id: int, now: datetime) -> Job:
        return self._engine.run(lambda conn: jobs.retry_job(conn, job_id, now))

    def job_expired(self, now: datetime, limit: int) -> list[Job]:
        return self._engine.run(lambda conn: jobs.expired_jobs(conn, now, limit))

    def job_checkpoint(self, job_id: int, fence: int, data: Any, now: datetime) -> bool:
        return self._engine.run(lambda conn: jobs.checkpoint_job(conn, job_id, fence, data, now))

    def job_fence_current(self, job_id: int, fence: int, now: datetime) -> bool:
        """True while the fence is current and its lease unexpired at ``now``."""
        return self._engine.run(lambda conn: jobs.fence_live(conn, job_id, fence, now))

    def job_prune(self, params: PruneParams) -> int:
        return self._engine.run(lambda conn: jobs.prune_jobs(conn, params))

    def job_retry_failed(self, params: RetryFailed) -> RetryFailedResult:
        return self._engine.run(lambda conn: controls.retry_failed(conn, params))

    def job_finished_queues(self) -> list[str]:
        return self._engine.run(controls.finished_queues)

    def job_finished_cutoff(self, queue: str, state: JobState, keep: int) -> datetime | None:
        return self._engine.run(lambda conn: controls.finished_cutoff(conn, queue, state, keep))

    # queue controls ---------------------------------------------------------------------------

    def control_upsert(self, params: ControlUpsert) -> UpsertOutcome:
        return self._engine.run(lambda conn: controls.upsert_control(conn, params))

    def control_list(self) -> list[Control]:
        return self._engine.run(controls.list_controls)

    def control_pause(self, queue: str, paused: bool, now: datetime) -> Control:
        """Waits for the claims in flight (the controls lock), so none starts a job of a
        paused queue once this returns."""
        return self._engine.run(lambda conn: controls.pause_queue(conn, queue, paused, now))

    def control_usage(self, keys: Sequence[str] = ()) -> ControlUsage:
        def usage(conn: Conn) -> ControlUsage:
            active = [c for c in controls.list_controls(conn) if c.active]
            return controls.read_usage(conn, active, keys)

        return self._engine.run(usage)

    # leases -----------------------------------------------------------------------------------

    def lease_renew(
        self, worker_id: str, now: datetime, ttl: float, leases: Sequence[LeaseRenewal]
    ) -> dict[int, RenewResult]:
        if not leases:
            return {}
        return self._engine.run(lambda conn: claim.renew_leases(conn, worker_id, now, ttl, leases))

    def lease_list(self) -> list[LeaseRow]:
        return self._engine.run(claim.list_leases)

    def leader_elect(self, worker_id: str, now: datetime, ttl: float) -> LeaderState:
        return self._engine.run(lambda conn: claim.elect_leader(conn, worker_id, now, ttl))

    def leader_resign(self, worker_id: str, now: datetime) -> None:
        self._engine.run(lambda conn: claim.resign_leader(conn, worker_id))

    # schedules and slots ----------------------------------------------------------------------

    def schedule_upsert(self, params: ScheduleUpsert) -> UpsertOutcome:
        return self._engine.run(lambda conn: schedules.upsert_schedule(conn, params))

    def schedule_list(self) -> list[ScheduleRow]:
        return self._engine.run(schedules.list_schedules)

    def schedule_get(self, name: str) -> ScheduleRow | None:
        return self._engine.run(lambda conn: schedules.get_schedule(conn, name))

    def schedule_advance(
        self, name: str, expected_cursor: datetime | None, new_cursor: datetime
    ) -> bool:
        return self._engine.run(
            lambda conn: schedules.advance_schedule(conn, name, expected_cursor, new_cursor)
        )

    def schedule_delete(self, name: str) -> bool:
        return self._engine.run(lambda conn: schedules.delete_schedule(conn, name))

    def slot_enqueue(self, params: SlotEnqueue) -> SlotResult:
        return self._engine.run(lambda conn: schedules.enqueue_slot(conn, params))

    def ledger_list(
        self, schedule: str, limit: int = 50, before: datetime | None = None
    ) -> list[SlotRecord]:
        return self._engine.run(lambda conn: schedules.list_ledger(conn, schedule, limit, before))

    # workers ----------------------------------------------------------------------------------

    def worker_register(self, info: WorkerInfo) -> None:
        self._engine.run(lambda conn: schedules.register_worker(conn, info))

    def worker_heartbeat(self, worker_id: str, now: datetime) -> None:
        self._engine.run(lambda conn: schedules.heartbeat_worker(conn, worker_id, now))

    def worker_deregister(self, worker_id: str) -> None:
        self._engine.run(lambda conn: schedules.deregister_worker(conn, worker_id))

    def worker_list(self) -> list[WorkerRow]:
        return self._engine.run(schedules.list_workers)

    # transactions and wake-ups ----------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A pooled psycopg connection in a transaction; the caller's own statements raise
        psycopg's errors unchanged."""
        return self._engine.transaction(map_body=False)

    @contextlib.contextmanager
    def fenced_transaction(self, job_id: int, fence: int, now: datetime) -> Iterator[Any]:
        """A transaction that first share-locks the job row and its key's lease row and checks
        the fence; the locks keep the fence current (no finish, rescue, takeover or renewal can
        commit) until this transaction ends."""
        with self._engine.transaction(map_body=False) as conn:
            live = self._engine.joined(conn, lambda c: jobs.lock_fence(c, job_id, fence, now))
            if not live:
                raise FenceRejected(job_id, fence)
            yield conn

    def wait_for_work(self, timeout: float) -> bool:
        return self._listener.wait(timeout)

    def notify_work(self, queue: str) -> None:
        self._engine.run(lambda conn: jobs.fetch(conn, "notify_work", {"queue": queue}))

    # observability (oncely.store.observability; SQL in observe.sql) -------------------------

    def execution_counts(self, window: ExecutionWindow) -> list[ExecutionCount]:
        return self._engine.run(lambda conn: observe.execution_counts(conn, window))

    def execution_overlaps(self, task: str, since: datetime, until: datetime) -> int:
        return self._engine.run(lambda conn: observe.execution_overlaps(conn, task, since, until))

    def execution_list(
        self, job_id: int | None = None, task: str | None = None, limit: int = 50
    ) -> list[Execution]:
        return self._engine.run(lambda conn: observe.execution_list(conn, job_id, task, limit))

    def execution_durations(self, task: str, limit: int = 50) -> list[float]:
        return self._engine.run(lambda conn: observe.execution_durations(conn, task, limit))

    def ledger_counts(
        self, since: datetime, until: datetime, schedule: str | None = None
    ) -> list[LedgerCount]:
        return self._engine.run(lambda conn: observe.ledger_counts(conn, since, until, schedule))

    def job_waiting(self, now: datetime) -> list[WaitingGroup]:
        return self._engine.run(lambda conn: observe.job_waiting(conn, now))

    def event_record(self, params: FleetEventInsert) -> None:
        self._engine.run(lambda conn: observe.event_record(conn, params))

    def event_counts(self, since: datetime) -> dict[str, int]:
        return self._engine.run(lambda conn: observe.event_counts(conn, since))

    def event_list(self, name: str | None = None, limit: int = 50) -> list[FleetEvent]:
        return self._engine.run(lambda conn: observe.event_list(conn, name, limit))

    def anomaly_raise(self, params: AnomalyRaise) -> AnomalyRaiseResult:
        return self._engine.run(lambda conn: observe.anomaly_raise(conn, params))

    def anomaly_list(self, open_only: bool = True, limit: int = 100) -> list[Anomaly]:
        return self._engine.run(lambda conn: observe.anomaly_list(conn, open_only, limit))

    def anomaly_get(self, anomaly_id: int) -> Anomaly | None:
        return self._engine.run(lambda conn: observe.anomaly_get(conn, anomaly_id))

    def anomaly_resolve(self, anomaly_id: int, now: datetime) -> bool:
        return self._engine.run(lambda conn: observe.anomaly_resolve(conn, anomaly_id, now))

    def observation_prune(self, before: datetime, limit: int = 1000) -> int:
        return self._engine.run(lambda conn: observe.observation_prune(conn, before, limit))


def _schema_version(conn: Conn) -> int:
    if conn.execute(Q["migrations_table_exists"]).fetchone() != (True,):
        return 0
    row = conn.execute(Q["migrations_current_version"]).fetchone()
    return 0 if row is None else int(row[0])


def _prepare(conn: Conn, schema: str) -> int:
    conn.execute(Q["migrate_lock"], {"schema": schema})
    exists = conn.execute(Q["schema_exists"], {"schema": schema}).fetchone()
    # CREATE SCHEMA needs the CREATE privilege on the database even when the schema exists.
    if exists != (True,):
        conn.execute(sql.SQL(Q["schema_create"]).format(schema=sql.Identifier(schema)))
    conn.execute(Q["migrations_create_table"])
    return _schema_version(conn)


def _apply(conn: Conn, migration: Migration, schema: str) -> bool:
    conn.execute(Q["migrate_lock"], {"schema": schema})
    # Another migrator may have applied it while we waited for the lock.
    if _schema_version(conn) >= migration.version:
        return False
    conn.execute(migration.sql)
    values = {"version": migration.version, "name": migration.name, "applied_at": datetime.now(UTC)}
    conn.execute(Q["migrations_record"], values)
    return True


def _newer_message(found: int, needed: int) -> str:
    return f"database schema is version {found}, newer than this oncely ({needed}); upgrade oncely"
