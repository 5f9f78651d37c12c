"""The App: settings, the task and schedule registries, enqueue, and the facade that the CLI,
the dashboard and applications use (docs/facade.md).

An App is cheap to create: construction never touches the database. Its schema rule, applied when
the store is first used:

- ``auto_migrate=True`` (the default, so the embedded default and tests need no set-up): a new or
  older database is migrated then (event ``schema.migrated``). ``oncely worker`` runs this way.
- ``auto_migrate=False`` (read-only tools: every ``oncely`` command but ``migrate`` and
  ``worker``, the dashboard, ``worker --no-migrate``): the database must already hold this
  code's schema. It is checked read-only before the store opens
  (:func:`oncely.store.probe.require_current_schema`): a missing SQLite file stays missing, a
  foreign or empty database is left as it is, and an older schema is refused with "run
  ``oncely migrate``".

Either way a database migrated by a newer oncely is refused
(:class:`~oncely.errors.SchemaMismatch`). :meth:`App.migrate` moves the schema up or down
whatever ``auto_migrate`` says.

The facade: operator actions (:meth:`App.retry_job`, :meth:`App.cancel_job`,
:meth:`App.pause_queue`, :meth:`App.resume_queue`, :meth:`App.retry_dead_letters`), each
emitting its event with who asked; :meth:`App.transaction` for application SQL in the job store;
:meth:`App.run_now`; the schedule actions (:mod:`oncely.schedule_actions`: pause, resume,
trigger, backfill, delete, apply, dynamic schedules); and ``app.read`` (:mod:`oncely.reads`).
``app.store`` is the engine's own seam: internal, its operations change without notice. The
engine's services get a :class:`~oncely.runtime.Runtime` (``app.runtime``), never the App.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from oncely import sql as oncely_sql
from oncely.clock import Clock, clock_from_spec
from oncely.config import Settings
from oncely.errors import ConfigError, OncelyError, UnknownTask
from oncely.observe.diagnose import WatchdogConfig
from oncely.observe.events import EventBus
from oncely.observe.recorder import FLEET_EVENTS, fleet_recorder
from oncely.operations import Operations
from oncely.queues import QueueSpec, Rate, Retention, positive
from oncely.reads import Reads
from oncely.redaction import mask_text
from oncely.retry import NO_RETRY, RetryPolicy
from oncely.runtime import Runtime
from oncely.schedule_actions import ScheduleActions
from oncely.schedules import ScheduleSpec
from oncely.store import open_store
from oncely.store.base import Store
from oncely.store.params import JobInsert
from oncely.store.probe import require_current_schema
from oncely.tasks import JobHandle, ScheduleGuards, Task, TaskOptions
from oncely.transaction import Transaction
from oncely.types import Overlap
from oncely.validate import check_database_url, check_name
from oncely.worker import Worker

log = logging.getLogger("oncely")


class App(Operations, ScheduleActions):
    def __init__(
        self,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        settings: Settings | None = None,
        auto_migrate: bool = True,
        watchdog: WatchdogConfig | None = None,
    ) -> None:
        base = settings or Settings.from_env(database_url=url)
        self.settings = base.with_(database_url=url)
        self.clock: Clock = clock or clock_from_spec(os.environ.get("ONCELY_CLOCK"))
        self.events = EventBus(self.clock.now)
        self.events.subscribe(fleet_recorder(lambda: self.store), names=FLEET_EVENTS)
        self.tasks: dict[str, Task] = {}
        self.schedules: dict[str, ScheduleSpec] = {}
        self.queues: dict[str, QueueSpec] = {}
        # Which tasks a schedule guards: their manual jobs take the schedule's singleton key.
        self.schedule_guards = ScheduleGuards(self.schedules, lambda: self.store.schedule_list())
        self.auto_migrate = auto_migrate
        # The thresholds of the leader's watchdog and of `oncely doctor` for this app.
        self.watchdog = watchdog or WatchdogConfig()
        # The Worker class app.worker() (and `oncely worker`) builds; a subclass may change how
        # its workers behave without any setting.
        self.worker_class: type[Worker] = Worker
        self._store: Store | None = None
        self._store_lock = threading.Lock()

    # store -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.settings.database_url

    @property
    def store(self) -> Store:
        """The engine's storage seam. Internal: use the facade (this class's methods,
        ``app.read``, ``app.transaction()``); the store's operations change without notice."""
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = self._open_store()
        return self._store

    def _open_store(self, apply_rule: bool = True) -> Store:
        try:
            url = check_database_url(self.url)
            if apply_rule and not self.auto_migrate:
                require_current_schema(url)  # before opening: opening may create the file
            store = open_store(url)
            if apply_rule and self.auto_migrate:
                self._ensure_schema(store)
        except OncelyError as exc:  # whatever the store says of its URL, never its password
            exc.args = (mask_text(str(exc), self.url),)
            raise
        return store

    def _unchecked_store(self) -> Store:
        """The store, opened without the schema rule (for migrating it)."""
        with self._store_lock:
            if self._store is None:
                self._store = self._open_store(apply_rule=False)
            return self._store

    def _ensure_schema(self, store: Store) -> None:
        from oncely.store.migrations import latest_version

        current = store.schema_version()
        if current < latest_version(store.dialect):
            result = store.migrate()
            if result.applied:
                self.events.emit(
                    "schema.migrated",
                    from_version=result.from_version,
                    to_version=result.to_version,
                )
        store.check_schema()

    def check_schema(self) -> None:
        """Apply the schema rule now (migrate, or refuse with one line) instead of on first
        use: ``oncely worker`` and ``oncely dashboard`` do, before they start serving."""
        self.store.check_schema()

    def migrate(self, to: int | None = None) -> Any:
        """Bring the schema to version ``to`` (default: this code's newest), up or down
        (``oncely migrate [--to VERSION]``); returns :class:`oncely.sql.MigrateResult`."""
        return self._unchecked_store().migrate(to)

    def migration_status(self) -> tuple[int, list[Any]]:
        """The schema's version and each migration, applied or pending (reads only: a missing
        SQLite file is reported as version 0, not created)."""
        from oncely.store.migrations import migrations_for
        from oncely.store.probe import read_schema_version

        dialect, _, version = read_schema_version(self.url)
        if version is None:  # in memory: whatever this process's store holds
            return self._unchecked_store().migration_status()
        return version, [oncely_sql.MigrationStep(m.version, m.label, m.version <= version,
                                                  m.down is not None)
                         for m in migrations_for(dialect)]

    @property
    def dialect(self) -> str:
        """The job store's SQL dialect: ``"sqlite"`` or ``"postgresql"``."""
        return self.store.dialect

    @property
    def runtime(self) -> Runtime:
        """What the engine's services are built from (store, clock, events, settings, the
        declarations): a new frozen object each time, over the app's own registries."""
        return Runtime(self.settings, self.clock, self.events, lambda: self.store, self.tasks,
                       self.schedules, self.queues, self.watchdog, app=self)

    @property
    def read(self) -> Reads:
        """The read API (:mod:`oncely.reads`): jobs, stored schedules, ledger, executions."""
        return Reads(self.runtime)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A transaction on the job store for application SQL (:mod:`oncely.transaction`):
        ``tx.execute(sql, params)`` takes ``%s`` / ``%(name)s`` on both stores."""
        store = self.store
        with store.transaction() as connection:
            yield Transaction(connection, store.dialect)

    def close(self) -> None:
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # tasks -------------------------------------------------------------------------------
    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        singleton: bool | str | None = None,
        priority: int = 0,
        limit: tuple[int, float | timedelta] | None = None,
        concurrency_key: str | None = None,
        max_per_key: int | None = None,
        isolation: str = "thread",
    ) -> Any:
        """Register a handler as a task: bare (``@app.task``) it returns the Task; with options
        (``@app.task(queue=…)``) it returns the decorator that does. ``limit``,
        ``concurrency_key`` and ``max_per_key`` hold for the whole fleet (:mod:`oncely.queues`)."""
        check_name("queue", queue)

        def register(func: Callable[..., Any]) -> Task:
            task_name = name or f"{func.__module__}.{func.__qualname__}".removeprefix("__main__.")
            if task_name in self.tasks and self.tasks[task_name].fn is not func:
                raise ConfigError(f"task {task_name!r} is registered twice")
            owner = f"task {task_name!r}"
            per_key = positive(owner, "max_per_key", max_per_key)
            if concurrency_key is not None and not isinstance(concurrency_key, str):
                raise ConfigError(f"{owner}: concurrency_key must be a template string such as "
                                  f'"org:{{org_id}}", got {concurrency_key!r}')
            options = TaskOptions(queue, retry or NO_RETRY, timeout, singleton, priority,
                                  Rate.parse(owner, limit), concurrency_key,
                                  per_key or (1 if concurrency_key is not None else None),
                                  isolation)
            task = Task(self, task_name, func, options)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def queue(
        self,
        name: str,
        *,
        max_running: int | None = None,
        limit: tuple[int, float | timedelta] | None = None,
        retention: Retention | None = None,
    ) -> QueueSpec:
        """Declare a queue's fleet-wide limits and its retention (:mod:`oncely.queues`):
        ``max_running`` jobs at once, at most ``limit=(n, window)`` starts per window, and
        ``retention=oncely.Retention(...)``. Workers upsert declared queues when they start."""
        spec = QueueSpec.create(check_name("queue", name), max_running, limit, retention)
        existing = self.queues.get(name)
        if existing is not None and existing != spec:
            raise ConfigError(f"queue {name!r} is declared twice with different limits")
        self.queues[name] = spec
        return spec

    def get_task(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTask(f"unknown task {name!r}; registered tasks: {known}") from None

    # enqueue -----------------------------------------------------------------------------
    def enqueue(self, task: str | Task, /, **args: Any) -> JobHandle:
        """Enqueue ``task`` (a Task or its name) with keyword args; see :meth:`Task.enqueue`."""
        resolved = task if isinstance(task, Task) else self.get_task(task)
        return resolved.enqueue(**args)

    def enqueue_job(
        self,
        task: str | Task,
        args: dict[str, Any] | None = None,
        *,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        connection: Any = None,
    ) -> JobHandle:
        """Enqueue with args as a dict. ``connection`` (a :meth:`transaction`, or its driver
        connection) puts the job in the caller's transaction: it commits, or rolls back, with
        the caller's writes."""
        resolved = task if isinstance(task, Task) else self.get_task(task)
        now = self.clock.now()
        params = resolved.build_insert(
            dict(args or {}),
            now,
            run_at=run_at,
            delay=delay,
            priority=priority,
            unique_key=unique_key,
            queue=queue,
            max_attempts=max_attempts,
        )
        params = self._guard(resolved, [params])[0]  # after the checks: it may read the store
        if isinstance(connection, Transaction):
            connection = connection.connection
        result = self.store.job_insert(params, now, conn=connection)
        if result.created:
            self.events.emit("job.enqueued", job_id=result.job.id, task=resolved.name)
        return JobHandle(self, result.job, result.created)

    def enqueue_many(
        self, task: str | Task, args_list: Iterable[dict[str, Any]], **options: Any
    ) -> list[JobHandle]:
        """Enqueue one job per args dict in one transaction per batch."""
        resolved = task if isinstance(task, Task) else self.get_task(task)
        now = self.clock.now()
        inserts = resolved.build_inserts(args_list, now, **options)
        if options.get("overlap", Overlap.SKIP) != Overlap.ALLOW:
            inserts = self._guard(resolved, inserts)
        results = self.store.job_insert_many(inserts, now)
        if self.events.wants("job.enqueued"):
            for result in results:
                if result.created:
                    self.events.emit("job.enqueued", job_id=result.job.id, task=resolved.name)
        return [JobHandle(self, result.job, result.created) for result in results]

    def _guard(self, task: Task, inserts: list[JobInsert]) -> list[JobInsert]:
        """Manual jobs of ``task`` take its schedule's singleton key when ``singleton=None`` and
        a schedule guards it (:mod:`oncely.tasks`). Asked once the jobs passed their checks, so
        bad input is refused before the stored schedules are read."""
        if task.options.singleton is not None or not self.schedule_guards.guards(task.name):
            return inserts
        return [replace(insert, singleton_key=task.singleton_key(insert.args, scheduled=True))
                for insert in inserts]

    # schedules ---------------------------------------------------------------------------
    def schedule(
        self,
        name: str,
        task: str | Task,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        args: dict[str, Any] | None = None,
        tz: str = "UTC",
        overlap: str | Overlap = Overlap.SKIP,
        catch_up: str = "latest",
        catch_up_limit: int = 100,
        jitter: float = 0.0,
        dst: str = "shift",
        enabled: bool = True,
        queue: str | None = None,
        priority: int | None = None,
        misfire_grace: float | None = None,
    ) -> ScheduleSpec:
        """Declare a recurring trigger. Nothing is written or enqueued here: workers upsert the
        declared schedules by name when they start, and enqueue each slot once."""
        resolved = task if isinstance(task, Task) else self.get_task(task)
        spec = ScheduleSpec.create(
            check_name("schedule", name),
            resolved.name,
            cron=cron,
            every=every,
            tz=tz,
            args=args,
            queue=queue,
            priority=priority or 0,
            overlap=overlap,
            catch_up=catch_up,
            catch_up_limit=catch_up_limit,
            jitter=jitter,
            dst=dst,
            enabled=enabled,
            misfire_grace=misfire_grace,
        )
        # validates the args, queue and priority now, not when the first slot is due
        resolved.build_insert(spec.args, self.clock.now(), queue=spec.queue,
                              priority=spec.priority or None, scheduled=True)
        existing = self.schedules.get(name)
        if existing is not None and existing != spec:
            raise ConfigError(f"schedule {name!r} is declared twice with different definitions")
        self.schedules[name] = spec
        return spec

    # worker ------------------------------------------------------------------------------
    def worker(
        self,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        worker_id: str | None = None,
        maintenance: bool = True,
    ) -> Worker:
        """A worker of this app (an instance of ``app.worker_class``); ``maintenance=False``
        leaves out the slot enqueuer and the leader's services."""
        from oncely.maintenance.supervisor import Supervisor

        return self.worker_class(self.runtime, concurrency=concurrency, queues=queues,
                                 worker_id=worker_id,
                                 maintenance=Supervisor if maintenance else None)
