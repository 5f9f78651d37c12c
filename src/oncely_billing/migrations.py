"""The metering schema on the job store: versioned migrations owned by oncely_billing.

The scripts are ``sql/<dialect>/NNNN_description.sql``; applied versions are recorded in the
metering's own table ``oncely_metering_migrations`` (the engine's migrations are separate and
applied by the engine). Each migration runs in one transaction with the record of it, under a
lock (SQLite's write lock; a PostgreSQL advisory lock), so concurrent ``migrate`` calls from
several processes apply each version once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import oncely
from oncely_billing import db

# apps whose store (by URL) this process migrated already
_migrated: weakref.WeakKeyDictionary[oncely.App, str] = weakref.WeakKeyDictionary()
_migrated_lock = threading.Lock()


@dataclass(frozen=True)
class MeteringMigrateResult:
    from_version: int
    to_version: int
    applied: tuple[str, ...]


def latest_version(dialect: str) -> int:
    return len(db.migration_files(dialect))


def current_version(app: oncely.App) -> int:
    dialect = db.sql_dialect(app)
    with db.connection(app) as conn:
        db.run(conn, dialect, "migrate_lock")  # concurrent CREATE IF NOT EXISTS can collide
        db.run(conn, dialect, "migrations_table_create")
        row = db.fetch_one(conn, dialect, "migrations_current_version")
    return int(row[0]) if row else 0


def migrate(app: oncely.App) -> MeteringMigrateResult:
    """Apply the missing metering migrations; refuse a schema newer than this code."""
    dialect = db.sql_dialect(app)
    before = current_version(app)
    latest = latest_version(dialect)
    if before > latest:
        raise oncely.SchemaMismatch(
            f"the metering schema is version {before}, newer than this oncely ({latest}); "
            "upgrade oncely"
        )
    applied: list[str] = []
    for version, name, script in db.migration_files(dialect):
        if version <= before:
            continue
        if _apply(app, dialect, version, name, script):
            applied.append(f"{version:04d}_{name}")
    return MeteringMigrateResult(before, current_version(app), tuple(applied))


def ensure_schema(app: oncely.App) -> None:
    """Migrate once per process and store (cheap to call before every use)."""
    if _migrated.get(app) == app.url:
        return
    with _migrated_lock:
        if _migrated.get(app) != app.url:
            migrate(app)
            _migrated[app] = app.url


def _apply(app: oncely.App, dialect: str, version: int, name: str, script: str) -> bool:
    with db.connection(app) as conn:
        db.run(conn, dialect, "migrate_lock")
        row = db.fetch_one(conn, dialect, "migrations_current_version")
        if row and int(row[0]) >= version:
            return False  # another process applied it while we waited for the lock
        for statement in split_statements(script, dialect):
            conn.execute(statement)
        params = {"version": version, "name": name, "now": time.time()}
        db.run(conn, dialect, "migration_record", params)
    return True


def split_statements(script: str, dialect: str) -> list[str]:
    """The statements of a script, to run one by one inside our own transaction."""
    if dialect != "sqlite":
        return [script]
    statements: list[str] = []
    start = 0
    for index, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : index + 1]):
            statement = script[start : index + 1].strip()
            if _has_code(statement):
                statements.append(statement)
            start = index + 1
    if _has_code(script[start:]):
        statements.append(script[start:].strip())
    return statements


def _has_code(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def run_script(conn: Any, dialect: str, name: str) -> None:
    """Run a named multi-statement query (such as ``metering_data_clear``)."""
    for statement in split_statements(db.q(dialect, name) + "\n", dialect):
        conn.execute(statement)
