"""The SQLite dialect: the :class:`~oncely.store.dialect.Dialect` over one
:class:`~oncely.store.sqlite.engine.Engine`.

Instants are epoch seconds (``REAL``), JSON columns text, list parameters JSON text read with
``json_each``. There are no row locks: every write is one ``BEGIN IMMEDIATE`` transaction that
holds SQLite's single write lock until it commits, so a ``…_for_update`` query is the plain read
and the controls and migrations need no lock of their own.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from oncely import sql
from oncely.errors import StoreError
from oncely.store.dialect import Dialect, Params, queries_of
from oncely.store.rescue import LivenessHold, NoHold
from oncely.store.rows import dump_error, job_from_row, to_epoch
from oncely.store.sqlite import liveness
from oncely.store.sqlite.engine import Engine
from oncely.types import Job, JobError

T = TypeVar("T")

PACKAGE = "oncely.store.sqlite"
QUERIES = queries_of(PACKAGE)


def fetch(conn: sqlite3.Connection, name: str, params: Params | None = None) -> list[sqlite3.Row]:
    # fetchall: a half-read RETURNING statement would stay open and block COMMIT.
    return conn.execute(QUERIES[name], params or {}).fetchall()


def fetch_one(conn: sqlite3.Connection, name: str, params: Params | None = None) -> Any:
    rows = conn.execute(QUERIES[name], params or {}).fetchall()  # on every finish: no extra call
    return rows[0] if rows else None


def to_job(row: sqlite3.Row) -> Job:
    return job_from_row(row, json_text=True)


class SQLiteDialect(Dialect):
    name = "sqlite"
    package = PACKAGE
    json_text = True
    writes_take_turns = True
    unique_violation = sqlite3.IntegrityError

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    # transactions ------------------------------------------------------------------------------

    def write(self, work: Callable[[Any], T]) -> T:
        return self.engine.write(work)

    def read(self, work: Callable[[Any], T]) -> T:
        return self.engine.read(work)

    def joined(self, conn: Any, work: Callable[[Any], T]) -> T:
        with self.engine.joined(conn):
            return work(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.engine.transaction() as conn:
            yield conn

    def close(self) -> None:
        self.engine.close()

    # codec and SQL -------------------------------------------------------------------------------

    def instant(self, value: datetime) -> float:
        return to_epoch(value)

    def array(self, values: Sequence[Any]) -> str:
        return json.dumps(list(values))

    def error_param(self, error: JobError | None) -> str | None:
        return dump_error(error)  # one object, appended with json_insert

    def fetch(self, conn: Any, name: str, params: Params | None = None) -> list[Any]:
        return fetch(conn, name, params)

    def execute(self, conn: Any, name: str, params: Params | None = None) -> int:
        return int(conn.execute(QUERIES[name], params or {}).rowcount)

    # liveness ------------------------------------------------------------------------------------

    def liveness_lock(self, worker_id: str) -> LivenessHold:
        if self.engine.memory:
            return NoHold()
        try:
            return liveness.FlockHold(self.engine.path, worker_id)
        except OSError as exc:
            raise StoreError(
                f"cannot hold a liveness lock beside {self.engine.path!r}: {exc}"
            ) from None

    def owners_gone(self, conn: Any, worker_id: str) -> list[str]:
        """The owners whose flock this process can take: their processes are gone."""
        rows = fetch(conn, "worker_running_owners", {"worker_id": worker_id})
        return [row["worker_id"] for row in rows if liveness.lock_is_free(row["liveness"])]

    # locks and migrations ------------------------------------------------------------------------

    def lock(self, conn: Any) -> None:
        """Nothing to take: the write lock held since ``BEGIN IMMEDIATE`` serialises migrators."""

    def lock_controls(self, conn: Any) -> None:
        """Nothing to take: the write lock held since ``BEGIN IMMEDIATE`` excludes every claim."""

    def run(self, conn: Any, script: str) -> None:
        for statement in sql.split_statements(script):
            conn.execute(statement)
