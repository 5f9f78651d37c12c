"""The metering schema on the job store: versioned migrations owned by oncely_billing.

The scripts are ``sql/<dialect>/NNNN_description.sql``; applied versions are recorded in the
metering's own table ``oncely_metering_migrations`` (the engine's migrations are separate and
applied by the engine). The engine's public runner (:func:`oncely.sql.migrate`) applies them:
each migration in one transaction with the record of it, under a lock (SQLite's write lock; a
PostgreSQL advisory lock), so concurrent ``migrate`` calls from several processes apply each
version once.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import oncely
import oncely.sql
from oncely_billing import db

# apps whose store (by URL) this process migrated already
T = TypeVar("T")

_migrated: weakref.WeakKeyDictionary[oncely.App, str] = weakref.WeakKeyDictionary()
_migrated_lock = threading.Lock()


MeteringMigrateResult = oncely.sql.MigrateResult


@dataclass(frozen=True)
class _Ledger:
    """The metering's record of applied versions (:class:`oncely.sql.MigrationLedger`), kept
    with the dialect's named queries."""

    dialect: str

    def lock(self, conn: Any) -> None:
        db.run(conn, self.dialect, "migrate_lock")

    def prepare(self, conn: Any) -> None:
        db.run(conn, self.dialect, "migrations_table_create")

    def version(self, conn: Any) -> int:
        row = db.fetch_one(conn, self.dialect, "migrations_current_version")
        return int(row[0]) if row else 0

    def run(self, conn: Any, script: str) -> None:
        for statement in split_statements(script, self.dialect):
            conn.execute(statement)

    def record(self, conn: Any, migration: oncely.sql.Migration) -> None:
        params = {"version": migration.version, "name": migration.name, "now": time.time()}
        db.run(conn, self.dialect, "migration_record", params)

    def unrecord(self, conn: Any, migration: oncely.sql.Migration) -> None:
        db.run(conn, self.dialect, "migration_delete", {"version": migration.version})


def _in_transaction(app: oncely.App) -> Callable[[Callable[[Any], T]], T]:
    def run(work: Callable[[Any], T]) -> T:
        with db.connection(app) as conn:
            return work(conn)

    return run


def latest_version(dialect: str) -> int:
    return len(db.migration_files(dialect))


def current_version(app: oncely.App) -> int:
    ledger = _Ledger(db.sql_dialect(app))

    def current(conn: Any) -> int:
        ledger.lock(conn)  # concurrent CREATE IF NOT EXISTS can collide
        ledger.prepare(conn)
        return ledger.version(conn)

    return _in_transaction(app)(current)


def migrate(app: oncely.App, to: int | None = None) -> MeteringMigrateResult:
    """Bring the metering tables to version ``to`` (default: the newest), up or down (down
    steps are ``sql/<dialect>/NNNN_name.down.sql``); refuse a schema newer than this code."""
    result = _migrate(app, to)
    if to is not None:
        with _migrated_lock:  # a rollback must not leave this process thinking it is current
            _migrated.pop(app, None)
    return result


def _migrate(app: oncely.App, to: int | None = None) -> MeteringMigrateResult:
    dialect = db.sql_dialect(app)
    return oncely.sql.migrate(_in_transaction(app), _Ledger(dialect),
                              db.migration_files(dialect), "the metering schema", to=to)


def status(app: oncely.App) -> tuple[int, list[oncely.sql.MigrationStep]]:
    """The metering schema's version and each of its migrations, applied or pending."""
    version = current_version(app)
    steps = [oncely.sql.MigrationStep(m.version, m.label, m.version <= version, m.down is not None)
             for m in db.migration_files(db.sql_dialect(app))]
    return version, steps


def ensure_schema(app: oncely.App) -> None:
    """Migrate once per process and store (cheap to call before every use)."""
    if _migrated.get(app) == app.url:
        return
    with _migrated_lock:
        if _migrated.get(app) != app.url:
            _migrate(app)
            _migrated[app] = app.url


def split_statements(script: str, dialect: str) -> list[str]:
    """The statements of a script, to run one by one inside our own transaction (PostgreSQL
    takes a whole script in one call)."""
    if dialect != "sqlite":
        return [script]
    return oncely.sql.split_statements(script)


def run_script(conn: Any, dialect: str, name: str) -> None:
    """Run a named multi-statement query (such as ``metering_data_clear``)."""
    for statement in split_statements(db.q(dialect, name) + "\n", dialect):
        conn.execute(statement)
