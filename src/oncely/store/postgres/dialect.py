"""The PostgreSQL dialect: the :class:`~oncely.store.dialect.Dialect` over one pooled
:class:`~oncely.store.postgres.engine.Engine`.

Instants are ``timestamptz`` (aware UTC datetimes), JSON goes to the server as text cast to
``jsonb`` (so :func:`oncely.store.rows.dump_json` validates it as for SQLite) and comes back
decoded, list parameters are arrays. Rows are locked with ``FOR UPDATE``/``FOR SHARE``; the
controls and the migrations take advisory locks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from oncely.store.dialect import Dialect, Params, queries_of
from oncely.store.postgres import liveness
from oncely.store.postgres.engine import Engine
from oncely.store.rescue import LivenessHold
from oncely.store.rows import dump_error, job_from_row, utc
from oncely.types import Job, JobError

T = TypeVar("T")
Row = dict[str, Any]

PACKAGE = "oncely.store.postgres"
QUERIES = queries_of(PACKAGE)


# The statements of the hot paths (enqueue, claim, finish) are prepared on a connection's first
# use of them rather than after psycopg's default five: a pooled connection may serve only a
# few of each before it is replaced, and an unprepared one is planned again every time.
PREPARED = frozenset({
    "job_insert", "job_insert_many", "job_claim_fast", "job_claim_fast_in_queues",
    "job_finish_plain_many", "lease_renew",
})


def fetch(conn: psycopg.Connection[Any], name: str, params: Params | None = None) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(QUERIES[name], params, prepare=True if name in PREPARED else None)
        return cur.fetchall()


def fetch_tuples(
    conn: psycopg.Connection[Any], name: str, params: Params | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The column names and plain tuple rows of a statement: for the hot paths, where building
    a dict per row costs more than reading it."""
    with conn.cursor() as cur:
        cur.execute(QUERIES[name], params, prepare=True if name in PREPARED else None)
        rows = cur.fetchall()
        return [column.name for column in cur.description or ()], rows


def fetch_one(conn: psycopg.Connection[Any], name: str, params: Params | None = None) -> Row | None:
    rows = fetch(conn, name, params)
    return rows[0] if rows else None


def execute(conn: psycopg.Connection[Any], name: str, params: Params | None = None) -> int:
    with conn.cursor() as cur:
        cur.execute(QUERIES[name], params)
        return cur.rowcount


def to_job(row: Row) -> Job:
    return job_from_row(row, json_text=False)


def errors_json(error: JobError | None) -> str:
    """The JSON array appended to a job's ``errors``: empty, or the one new error."""
    return "[]" if error is None else f"[{dump_error(error)}]"


class PostgresDialect(Dialect):
    name = "postgresql"
    package = PACKAGE
    json_text = False
    unique_violation = psycopg.errors.UniqueViolation

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.schema = engine.target.schema

    # transactions ------------------------------------------------------------------------------

    def write(self, work: Callable[[Any], T]) -> T:
        return self.engine.run(work)

    def write_each(self, work: Callable[[Any], T]) -> T:
        return self.engine.run(work, autocommit=True)

    def joined(self, conn: Any, work: Callable[[Any], T]) -> T:
        return self.engine.joined(conn, work)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A pooled connection in a transaction; the caller's own statements raise psycopg's
        errors unchanged."""
        with self.engine.transaction(map_body=False) as conn:
            yield conn

    def savepoint(self, conn: Any) -> contextlib.AbstractContextManager[Any]:
        # A failed statement aborts the whole transaction unless a savepoint contains it.
        return conn.transaction()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.engine.close()

    # codec and SQL -------------------------------------------------------------------------------

    def instant(self, value: datetime) -> datetime:
        return utc(value)

    def array(self, values: Sequence[Any]) -> list[Any]:
        return list(values)

    def error_param(self, error: JobError | None) -> str:
        return errors_json(error)  # a one-element array, appended with ||

    def fetch(self, conn: Any, name: str, params: Params | None = None) -> list[Any]:
        return fetch(conn, name, params)

    def execute(self, conn: Any, name: str, params: Params | None = None) -> int:
        return execute(conn, name, params)

    # liveness ------------------------------------------------------------------------------------

    def liveness_lock(self, worker_id: str) -> LivenessHold:
        return liveness.AdvisoryHold(self.engine.target, worker_id, self.queries)

    def owners_gone(self, conn: Any, worker_id: str) -> list[str]:
        """The owners whose advisory lock no session holds (the SQL tells)."""
        values = {"worker_id": worker_id, "space": liveness.space_of(self.schema)}
        return [row["worker_id"] for row in fetch(conn, "worker_owners_gone", values)]

    # migrations ----------------------------------------------------------------------------------

    def lock(self, conn: Any) -> None:
        """Concurrent migrators of one schema take turns, a transaction at a time."""
        execute(conn, "migrate_lock", {"schema": self.schema})

    def prepare(self, conn: Any) -> None:
        exists = fetch_one(conn, "schema_check_exists", {"schema": self.schema})
        # CREATE SCHEMA needs the CREATE privilege on the database even when the schema exists.
        if exists is None or not exists["present"]:
            statement = pgsql.SQL(QUERIES["schema_create"]).format(
                schema=pgsql.Identifier(self.schema)
            )
            conn.execute(statement)
        super().prepare(conn)

    def run(self, conn: Any, script: str) -> None:
        conn.execute(script)
