"""Named SQL for oncely_billing, and the few helpers that run it on the job store.

SQL lives in ``sql/<dialect>/*.sql``: files named ``NNNN_description.sql`` are migrations (see
:mod:`oncely_billing.migrations`); every other file holds blocks that start with a
``-- name: <query_name>`` line and run to the next one. Both are read by :mod:`oncely.sql`, the
engine's public loader, so the two packages parse SQL files one way. Dialects: ``sqlite`` and
``postgres`` for the job store (chosen by ``app.dialect``), ``duckdb`` and ``clickhouse`` for
usage sources.

Conventions shared by both job-store dialects, so Python code never branches on the dialect:

* instants are passed as epoch seconds (float) and days as *epoch days* (``int``: days since
  1970-01-01, UTC); the SQL converts them to its own types;
* a batch of rows is one parameter set built by :func:`batch_params`: a JSON array of arrays for
  SQLite (read with ``json_each``), one array per column for PostgreSQL (read with ``unnest``).
  So every chunk is one set-based statement whose text never changes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from functools import cache
from typing import Any

import oncely
import oncely.sql

EPOCH_DAY0 = date(1970, 1, 1)


@contextlib.contextmanager
def connection(app: oncely.App) -> Iterator[Any]:
    """A transaction on the job store (``app.transaction()``), as the driver's connection: the
    named SQL here is written per dialect, in each driver's own parameter style."""
    with app.transaction() as tx:
        yield tx.connection


def sql_dialect(app: oncely.App) -> str:
    """The folder name of the job store's dialect."""
    dialect = app.dialect
    return "postgres" if dialect.startswith("postgres") else "sqlite"


@cache
def queries(dialect: str) -> oncely.sql.Queries:
    """The named queries of ``sql/<dialect>/`` (migration files left out)."""
    return oncely.sql.load_queries("oncely_billing", f"sql/{dialect}")


@cache
def migration_files(dialect: str) -> tuple[oncely.sql.Migration, ...]:
    """Every migration of ``dialect``, numbered 1..N."""
    return oncely.sql.load_migrations("oncely_billing", f"sql/{dialect}")


def q(dialect: str, name: str) -> str:
    return queries(dialect)[name]


def run(conn: Any, dialect: str, name: str, params: Mapping[str, Any] | None = None) -> Any:
    """Execute a named query on a job-store connection; returns the cursor."""
    return conn.execute(q(dialect, name), dict(params or {}))


def fetch_all(
    conn: Any, dialect: str, name: str, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in run(conn, dialect, name, params).fetchall()]


def fetch_one(
    conn: Any, dialect: str, name: str, params: Mapping[str, Any] | None = None
) -> tuple[Any, ...] | None:
    row = run(conn, dialect, name, params).fetchone()
    return None if row is None else tuple(row)


def fetch_ints(
    conn: Any, dialect: str, name: str, params: Mapping[str, Any] | None, width: int,
    batch: int = 100_000,
) -> Any:
    """An all-integer result as an ``(n, width)`` int64 numpy array, read in batches so the
    rows never exist as Python tuples all at once."""
    import numpy as np

    cursor = run(conn, dialect, name, params)
    parts = []
    while rows := cursor.fetchmany(batch):
        parts.append(np.array([tuple(row) for row in rows], dtype=np.int64).reshape(-1, width))
    return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.int64)


def batch_params(
    dialect: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], json_name: str = "rows"
) -> dict[str, Any]:
    """One chunk of rows as parameters: ``json_name`` (a JSON array of arrays) for SQLite, one
    list per column, named after the column, for PostgreSQL."""
    if dialect == "sqlite":
        return {json_name: json.dumps([list(row) for row in rows])}
    return {column: [row[index] for row in rows] for index, column in enumerate(columns)}


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def epoch(instant: datetime) -> float:
    if instant.tzinfo is None:
        raise ValueError("instants must be timezone-aware")
    return instant.timestamp()


def from_epoch(value: Any) -> datetime | None:
    """An instant read from either dialect (epoch seconds or a datetime) as aware UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value), UTC)


def epoch_day(day: date) -> int:
    return (day - EPOCH_DAY0).days


def from_epoch_day(value: int) -> date:
    return date.fromordinal(EPOCH_DAY0.toordinal() + int(value))


def as_date(value: Any) -> date | None:
    """A day read from either dialect ('YYYY-MM-DD' text or a date) as a date."""
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return value
    if isinstance(value, datetime):
        return value.date()
    return date.fromisoformat(str(value))
