"""The tables of Stripe usage metering, their migrations, and every query on them.

Four tables on the job store (SQLite or PostgreSQL; times are epoch milliseconds in ``BIGINT`` so
one schema serves both dialects):

* ``oncely_stripe_watermark`` — one row per metering stream (``usage``): ``hour_start_ms`` of the
  last hour whose every org was delivered or recorded failed. Written only inside the job's fenced
  transaction, and as a compare-and-set from the previous hour, so it moves one hour at a time.
* ``oncely_stripe_deliveries`` — one row per meter event (primary key: its Stripe identifier):
  ``delivered`` | ``duplicate`` (Stripe already had it) | ``failed`` (a 4xx, with Stripe's code) |
  ``retry`` (a failure a human reset) | ``lost`` (too old for Stripe to take). Resuming an hour
  skips every identifier already here, so a crash between two orgs sends nothing twice.
* ``oncely_stripe_hours`` — one row per finished hour: ``reported`` with its counts, or ``lost``.
* ``oncely_stripe_runs`` — one row per job attempt: start, end, outcome (``ok``, ``behind``,
  ``stripe_unavailable``, ``fence_lost``, ``error``), hours and events — "last run" in the CLI.

The tables are created by :func:`ensure_schema` (idempotent, concurrency-safe), which records its
versions in ``oncely_stripe_migrations``; it runs on the first use by the job or the CLI, and is
independent of the engine's and the data model's migrations. Queries are written once with ``?``
placeholders; :class:`Queries` gives them to psycopg as ``%s``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

STREAM = "usage"

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "stripe metering tables", (
        """CREATE TABLE IF NOT EXISTS oncely_stripe_watermark (
            name TEXT PRIMARY KEY,
            hour_start_ms BIGINT NOT NULL,
            updated_at_ms BIGINT NOT NULL,
            job_id BIGINT,
            fence BIGINT)""",
        """CREATE TABLE IF NOT EXISTS oncely_stripe_deliveries (
            identifier TEXT PRIMARY KEY,
            hour_start_ms BIGINT NOT NULL,
            org_id TEXT NOT NULL,
            event_name TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            value BIGINT NOT NULL,
            status TEXT NOT NULL,
            code TEXT,
            message TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            job_id BIGINT,
            updated_at_ms BIGINT NOT NULL)""",
        """CREATE INDEX IF NOT EXISTS oncely_stripe_deliveries_hour
            ON oncely_stripe_deliveries (hour_start_ms)""",
        """CREATE INDEX IF NOT EXISTS oncely_stripe_deliveries_status
            ON oncely_stripe_deliveries (status, hour_start_ms)""",
        """CREATE TABLE IF NOT EXISTS oncely_stripe_hours (
            hour_start_ms BIGINT PRIMARY KEY,
            status TEXT NOT NULL,
            events INTEGER NOT NULL DEFAULT 0,
            delivered INTEGER NOT NULL DEFAULT 0,
            duplicates INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            job_id BIGINT,
            finished_at_ms BIGINT NOT NULL,
            note TEXT)""",
        """CREATE TABLE IF NOT EXISTS oncely_stripe_runs (
            job_id BIGINT NOT NULL,
            attempt INTEGER NOT NULL,
            started_at_ms BIGINT NOT NULL,
            finished_at_ms BIGINT,
            outcome TEXT NOT NULL,
            hours INTEGER NOT NULL DEFAULT 0,
            events INTEGER NOT NULL DEFAULT 0,
            note TEXT,
            PRIMARY KEY (job_id, attempt))""",
    )),
)

_SQL: dict[str, str] = {
    "migrations_table": """CREATE TABLE IF NOT EXISTS oncely_stripe_migrations (
        version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)""",
    "migrations_applied": "SELECT version FROM oncely_stripe_migrations",
    "migration_record": """INSERT INTO oncely_stripe_migrations (version, name, applied_at_ms)
        VALUES (?, ?, ?) ON CONFLICT (version) DO NOTHING""",
    "watermark_get": "SELECT hour_start_ms FROM oncely_stripe_watermark WHERE name = ?",
    "watermark_insert": """INSERT INTO oncely_stripe_watermark
        (name, hour_start_ms, updated_at_ms, job_id, fence) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (name) DO NOTHING""",
    "watermark_advance": """UPDATE oncely_stripe_watermark
        SET hour_start_ms = ?, updated_at_ms = ?, job_id = ?, fence = ?
        WHERE name = ? AND hour_start_ms = ?""",
    "deliveries_done": """SELECT identifier FROM oncely_stripe_deliveries
        WHERE hour_start_ms = ? AND status <> 'retry'""",
    "delivery_upsert": """INSERT INTO oncely_stripe_deliveries (identifier, hour_start_ms, org_id,
            event_name, customer_id, value, status, code, message, attempts, job_id, updated_at_ms)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (identifier) DO UPDATE SET customer_id = excluded.customer_id,
            value = excluded.value, status = excluded.status, code = excluded.code,
            message = excluded.message,
            attempts = oncely_stripe_deliveries.attempts + excluded.attempts,
            job_id = excluded.job_id, updated_at_ms = excluded.updated_at_ms""",
    "hour_counts": """SELECT status, COUNT(*) FROM oncely_stripe_deliveries
        WHERE hour_start_ms = ? GROUP BY status""",
    "hour_record": """INSERT INTO oncely_stripe_hours (hour_start_ms, status, events, delivered,
            duplicates, failed, job_id, finished_at_ms, note)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (hour_start_ms) DO UPDATE SET status = excluded.status,
            events = excluded.events, delivered = excluded.delivered,
            duplicates = excluded.duplicates, failed = excluded.failed,
            job_id = excluded.job_id, finished_at_ms = excluded.finished_at_ms,
            note = excluded.note""",
    "retry_due": """SELECT identifier, hour_start_ms, org_id, event_name, customer_id, value
        FROM oncely_stripe_deliveries WHERE status = 'retry'
        ORDER BY hour_start_ms, identifier LIMIT ?""",
    "failures_by_code": """SELECT code, COUNT(*), MIN(hour_start_ms), MAX(hour_start_ms)
        FROM oncely_stripe_deliveries WHERE status = ? GROUP BY code ORDER BY COUNT(*) DESC""",
    "failures_list": """SELECT identifier, org_id, event_name, hour_start_ms, code, message,
            attempts, status, updated_at_ms
        FROM oncely_stripe_deliveries WHERE status IN ('failed', 'retry')
        ORDER BY hour_start_ms DESC, identifier LIMIT ?""",
    "failures_reset": """UPDATE oncely_stripe_deliveries SET status = 'retry', updated_at_ms = ?
        WHERE status = 'failed' AND (CAST(? AS TEXT) IS NULL OR code = ?)
            AND (CAST(? AS TEXT) IS NULL OR org_id = ?)""",
    "run_start": """INSERT INTO oncely_stripe_runs (job_id, attempt, started_at_ms, outcome)
        VALUES (?, ?, ?, 'running')
        ON CONFLICT (job_id, attempt) DO UPDATE SET started_at_ms = excluded.started_at_ms""",
    "run_finish": """UPDATE oncely_stripe_runs SET finished_at_ms = ?, outcome = ?, hours = ?,
        events = ?, note = ? WHERE job_id = ? AND attempt = ?""",
    "run_last": """SELECT job_id, attempt, started_at_ms, finished_at_ms, outcome, hours, events,
        note FROM oncely_stripe_runs ORDER BY started_at_ms DESC, job_id DESC LIMIT 1""",
    "hours_lost": "SELECT COUNT(*), MAX(hour_start_ms) FROM oncely_stripe_hours WHERE status = ?",
}


@dataclass(frozen=True)
class DeliveryRow:
    identifier: str
    hour_start_ms: int
    org_id: str
    event_name: str
    customer_id: str
    value: int
    status: str
    code: str | None
    message: str | None
    attempts: int
    job_id: int | None
    updated_at_ms: int


class Queries:
    """Every statement of this module, run on a DB-API connection of either dialect."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.postgres = dialect.startswith("postgres")

    def sql(self, name: str) -> str:
        text = _SQL[name]
        return text.replace("?", "%s") if self.postgres else text

    def one(self, conn: Any, name: str, *params: Any) -> Any:
        return conn.execute(self.sql(name), params).fetchone()

    def all(self, conn: Any, name: str, *params: Any) -> list[Any]:
        return list(conn.execute(self.sql(name), params).fetchall())

    def run(self, conn: Any, name: str, *params: Any) -> int:
        return int(conn.execute(self.sql(name), params).rowcount)

    def many(self, conn: Any, name: str, rows: Iterable[Sequence[Any]]) -> None:
        conn.cursor().executemany(self.sql(name), list(rows))

    # watermark ---------------------------------------------------------------------------
    def watermark(self, conn: Any) -> int | None:
        row = self.one(conn, "watermark_get", STREAM)
        return None if row is None else int(row[0])

    def advance_watermark(self, conn: Any, expected: int | None, new: int, now_ms: int,
                          job_id: int, fence: int) -> bool:
        """Compare-and-set; False when the watermark is not where this run found it."""
        if expected is None:
            return self.run(conn, "watermark_insert", STREAM, new, now_ms, job_id, fence) == 1
        return self.run(conn, "watermark_advance", new, now_ms, job_id, fence, STREAM,
                        expected) == 1

    # deliveries --------------------------------------------------------------------------
    def done_identifiers(self, conn: Any, hour_start_ms: int) -> set[str]:
        return {str(row[0]) for row in self.all(conn, "deliveries_done", hour_start_ms)}

    def record_deliveries(self, conn: Any, rows: Sequence[DeliveryRow]) -> None:
        if rows:
            self.many(conn, "delivery_upsert", (
                (r.identifier, r.hour_start_ms, r.org_id, r.event_name, r.customer_id, r.value,
                 r.status, r.code, r.message, r.attempts, r.job_id, r.updated_at_ms)
                for r in rows))

    def hour_counts(self, conn: Any, hour_start_ms: int) -> dict[str, int]:
        return {str(row[0]): int(row[1]) for row in self.all(conn, "hour_counts", hour_start_ms)}

    def record_hour(self, conn: Any, hour_start_ms: int, status: str, counts: dict[str, int],
                    job_id: int, now_ms: int, note: str | None = None) -> None:
        delivered, duplicates = counts.get("delivered", 0), counts.get("duplicate", 0)
        failed = counts.get("failed", 0)
        self.run(conn, "hour_record", hour_start_ms, status, delivered + duplicates + failed,
                 delivered, duplicates, failed, job_id, now_ms, note)

    def retry_due(self, conn: Any, limit: int) -> list[Any]:
        return self.all(conn, "retry_due", limit)

    def reset_failures(self, conn: Any, now_ms: int, code: str | None, org_id: str | None) -> int:
        return self.run(conn, "failures_reset", now_ms, code, code, org_id, org_id)

    # runs --------------------------------------------------------------------------------
    def run_started(self, conn: Any, job_id: int, attempt: int, now_ms: int) -> None:
        self.run(conn, "run_start", job_id, attempt, now_ms)

    def run_finished(self, conn: Any, job_id: int, attempt: int, now_ms: int, outcome: str,
                     hours: int, events: int, note: str | None) -> None:
        self.run(conn, "run_finish", now_ms, outcome, hours, events, note, job_id, attempt)


_ready: set[str] = set()
_ready_lock = threading.Lock()


def ensure_schema(store: Any, now_ms: int) -> Queries:
    """Create or upgrade the metering tables once per process and store URL; returns the
    :class:`Queries` for the store's dialect."""
    queries = Queries(store.dialect)
    key = f"{store.dialect}:{store.url}"
    with _ready_lock:
        if key in _ready:
            return queries
        with store.transaction() as conn:
            if queries.postgres:  # concurrent CREATE TABLE IF NOT EXISTS can collide in PG
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('oncely_stripe_migrations'))")
            conn.execute(queries.sql("migrations_table"))
            applied = {int(row[0]) for row in queries.all(conn, "migrations_applied")}
            for version, name, statements in MIGRATIONS:
                if version in applied:
                    continue
                for statement in statements:
                    conn.execute(statement)
                queries.run(conn, "migration_record", version, name, now_ms)
        _ready.add(key)
    return queries
