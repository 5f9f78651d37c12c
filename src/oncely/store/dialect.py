"""What :class:`~oncely.store.sqlstore.SQLStore` needs to know about a SQL dialect, and nothing
more: how to run a transaction, how instants, lists and JSON travel to and from the server, how
to run a named query, which driver error is a unique violation, and how migrations are locked,
read and recorded, and how a worker's liveness lock is taken and proven free.

Every store operation is written once against this class (``store/ops``); each dialect
subpackage (``store/sqlite``, ``store/postgres``) subclasses it and overrides only what differs.
Its queries come from the subpackage's ``sql/*.sql`` files, under the same names in every
dialect, and its migrations from ``migrations/NNNN_*.sql``, with the same names and numbers.

=================  =================================  ===================================
                   SQLite                             PostgreSQL
=================  =================================  ===================================
instants           epoch seconds (``REAL``)           ``timestamptz`` (aware datetimes)
JSON columns       text, decoded here                 ``jsonb``, decoded by psycopg
list parameters    JSON text, read with ``json_each``  arrays (``= ANY(…)``, ``unnest``)
row locks          the write lock (``BEGIN IMMEDIATE``)  ``FOR UPDATE`` / ``FOR SHARE``
unique violation   ``sqlite3.IntegrityError``         ``psycopg.errors.UniqueViolation``
liveness lock      an ``flock`` beside the database   a session-level advisory lock
=================  =================================  ===================================
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any, ClassVar, TypeVar

from oncely import sql
from oncely.store.rescue import LivenessHold
from oncely.types import JobError

T = TypeVar("T")
Row = Mapping[str, Any]  # a row addressable by column name (sqlite3.Row, a psycopg dict row)
Params = Mapping[str, Any]


class Dialect(ABC):
    """One database of one dialect: its transactions, its codec and its named SQL."""

    name: ClassVar[str]  # Store.dialect: "sqlite" | "postgresql"
    package: ClassVar[str]  # the subpackage holding sql/ and migrations/
    json_text: ClassVar[bool]  # JSON columns come back as text
    #: Store.writes_take_turns: one write transaction at a time on the whole database
    writes_take_turns: ClassVar[bool] = False
    #: what the driver raises when a write breaks a unique index (one class per dialect)
    unique_violation: ClassVar[type[Exception]]

    def __init__(self) -> None:
        self.queries = queries_of(self.package)

    # transactions ------------------------------------------------------------------------------

    @abstractmethod
    def write(self, work: Callable[[Any], T]) -> T:
        """Run ``work`` on a connection in a transaction of its own that may write; inside
        :meth:`transaction` on the same thread, join that one."""

    def read(self, work: Callable[[Any], T]) -> T:
        """Run ``work``, which only reads; by default as :meth:`write` does."""
        return self.write(work)

    def write_each(self, work: Callable[[Any], T]) -> T:
        """Run ``work``, whose statements are each atomic on their own and need no transaction
        around them (one enqueue: an insert that may conflict, then a read of what won); by
        default as :meth:`write` does. A server dialect saves the BEGIN and COMMIT round
        trips."""
        return self.write(work)

    @abstractmethod
    def joined(self, conn: Any, work: Callable[[Any], T]) -> T:
        """Run ``work`` on a caller's connection, inside the caller's transaction, with driver
        errors mapped to oncely's."""

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A connection inside a transaction that commits on exit (rolls back on error)."""

    def savepoint(self, conn: Any) -> contextlib.AbstractContextManager[Any]:
        """A savepoint, where a failed statement would spoil the rest of the transaction."""
        return contextlib.nullcontext()

    @abstractmethod
    def close(self) -> None: ...

    # codec ---------------------------------------------------------------------------------------

    @abstractmethod
    def instant(self, value: datetime) -> Any:
        """An instant as the dialect stores it."""

    def instant_or_none(self, value: datetime | None) -> Any:
        return None if value is None else self.instant(value)

    def now(self) -> Any:
        """The wall-clock instant, for bookkeeping that is not part of the job model."""
        return self.instant(datetime.now(UTC))

    @abstractmethod
    def array(self, values: Sequence[Any]) -> Any:
        """A list parameter."""

    @abstractmethod
    def error_param(self, error: JobError | None) -> str | None:
        """A job error as the parameter its queries append to the job's ``errors``."""

    # named SQL -----------------------------------------------------------------------------------

    @abstractmethod
    def fetch(self, conn: Any, name: str, params: Params | None = None) -> list[Row]:
        """Every row of the named query."""

    def fetch_one(self, conn: Any, name: str, params: Params | None = None) -> Row | None:
        rows = self.fetch(conn, name, params)
        return rows[0] if rows else None

    @abstractmethod
    def execute(self, conn: Any, name: str, params: Params | None = None) -> int:
        """Run the named statement; the number of rows it touched."""

    def lock_controls(self, conn: Any) -> None:
        """Wait for the claims in flight and hold new ones off until the transaction ends, so
        a changed control binds every claim that starts after it commits."""
        self.execute(conn, "control_lock_exclusive")

    # liveness (oncely.store.rescue) --------------------------------------------------------------

    @abstractmethod
    def liveness_lock(self, worker_id: str) -> LivenessHold:
        """Take the worker's liveness lock (the store then records its token in the worker's
        row)."""

    @abstractmethod
    def owners_gone(self, conn: Any, worker_id: str) -> list[str]:
        """Owners (other than ``worker_id``) of running jobs whose liveness lock is free."""

    # migrations (the store's sql.MigrationLedger) ------------------------------------------------

    @abstractmethod
    def lock(self, conn: Any) -> None:
        """Serialise migrators until the transaction ends."""

    def prepare(self, conn: Any) -> None:
        self.execute(conn, "migrations_create_table")

    def version(self, conn: Any) -> int:
        exists = self.fetch_one(conn, "migrations_check_table")
        if exists is None or not exists["present"]:
            return 0
        row = self.fetch_one(conn, "migrations_get_version")
        return 0 if row is None else int(row["version"])

    @abstractmethod
    def run(self, conn: Any, script: str) -> None:
        """Run one migration script inside the caller's transaction."""

    def record(self, conn: Any, migration: sql.Migration) -> None:
        values = {"version": migration.version, "name": migration.name, "applied_at": self.now()}
        self.execute(conn, "migrations_record", values)

    def unrecord(self, conn: Any, migration: sql.Migration) -> None:
        self.execute(conn, "migrations_delete", {"version": migration.version})



@cache
def queries_of(package: str) -> sql.Queries:
    """The named queries of a dialect subpackage, read once per process."""
    return sql.load_queries(package, "sql")
