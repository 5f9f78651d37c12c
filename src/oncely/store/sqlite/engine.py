"""SQLite plumbing for :class:`~oncely.store.sqlite.store.SQLiteStore`.

Owns URL parsing, one connection per thread (a single locked connection for ``:memory:``), the
pragmas, write transactions (``BEGIN IMMEDIATE``, so a claim is atomic across processes) with a
bounded, jittered retry while another process holds the write lock, transactions that take the
write lock only when they write (claims), and the mapping of sqlite3 errors to
:mod:`oncely.errors`.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import unquote

from oncely.errors import (
    InvalidURL,
    OncelyError,
    SchemaMismatch,
    StoreBusy,
    StoreError,
    StoreUnavailable,
)

T = TypeVar("T")

MEMORY = ":memory:"
BUSY_BUDGET = 30.0  # seconds a write may wait for the lock, in total, before StoreBusy
BUSY_TIMEOUT_MS = 2000  # SQLite's own wait inside one attempt
WAIT_STEP = 0.008  # data_version polling interval of wait_for_change
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

_URL_HELP = "use sqlite:///relative.db, sqlite:////absolute/path.db or sqlite://:memory:"


def parse_url(url: str) -> str:
    """The database path a ``sqlite://`` URL names, or ``:memory:``."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() != "sqlite":
        raise InvalidURL(f"not a SQLite URL: {url!r}; {_URL_HELP}")
    if "?" in rest or "#" in rest:
        raise InvalidURL(f"SQLite URL {url!r} takes no query string or fragment; {_URL_HELP}")
    if rest in (MEMORY, "/" + MEMORY):
        return MEMORY
    if not rest.startswith("/"):
        raise InvalidURL(f"SQLite URL {url!r} has a host part; {_URL_HELP}")
    path = unquote(rest[1:])
    if not path or path.endswith("/"):
        raise InvalidURL(f"SQLite URL {url!r} names no database file; {_URL_HELP}")
    return path


def check_path(path: str) -> None:
    """Fail early, in one line, for a path SQLite could only report as 'unable to open'."""
    if os.path.isdir(path):
        raise StoreUnavailable(
            f"SQLite database path {path!r} is a directory; put a file name at the end of the URL"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StoreUnavailable(
            f"directory {folder!r} for SQLite database {path!r} does not exist; "
            "create it or fix the database URL"
        )


def is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _BUSY_CODES:
        return True
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def map_error(exc: sqlite3.Error, path: str) -> OncelyError:
    """The oncely error a user can act on for a sqlite3 failure on database ``path``."""
    text = str(exc)
    lowered = text.lower()
    if "file is not a database" in lowered:
        return StoreUnavailable(
            f"{path!r} is not a SQLite database; point the URL at an oncely database or a new file"
        )
    if "unable to open database" in lowered:
        return StoreUnavailable(
            f"cannot open SQLite database {path!r}; check that its directory exists and is writable"
        )
    if "readonly database" in lowered:
        return StoreUnavailable(f"SQLite database {path!r} is read-only; make it writable")
    if "disk is full" in lowered or "disk i/o error" in lowered:
        return StoreUnavailable(f"SQLite database {path!r}: {text}; check the disk")
    if "no such table: oncely_" in lowered:
        return SchemaMismatch(
            f"SQLite database {path!r} has no oncely schema ({text}); run `oncely migrate`"
        )
    if is_busy(exc):
        return StoreBusy(f"SQLite database {path!r} is locked by another process: {text}")
    return StoreError(f"SQLite error on {path!r}: {text}")


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def committed(conn: sqlite3.Connection, begin: str, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work`` on ``conn`` between ``begin`` and COMMIT; rolled back if anything raises."""
    conn.execute(begin)
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    return result


class _Connection(sqlite3.Connection):
    """A plain connection that ``close()`` can reach through a weak reference."""


class Engine:
    """Connections and transactions for one SQLite database."""

    def __init__(self, path: str, busy_budget: float = BUSY_BUDGET) -> None:
        # Threads of one process queue for SQLite's write lock here, where a release wakes the
        # next at once, instead of in SQLite's busy handler, which sleeps in growing steps.
        self._write_lock = threading.RLock()
        self.memory = path == MEMORY
        # Absolute, so connections opened later by other threads find the same file even if
        # the process changes directory in between.
        self.path = path if self.memory else os.path.abspath(path)
        self.busy_budget = busy_budget
        self._busy_timeout_ms = int(min(BUSY_TIMEOUT_MS, busy_budget * 1000))
        if not self.memory:
            check_path(self.path)
        self._pid = os.getpid()
        self._local = threading.local()
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._closed = False
        # Serialises the single in-memory connection; for files each thread has its own.
        self._memory_lock = threading.RLock()
        self._shared: sqlite3.Connection | None = None
        # Commits made through this engine wake local waiters at once; other processes are
        # noticed through PRAGMA data_version.
        self._changed = threading.Condition()
        self._generation = 0
        with self.session():
            pass

    # connections ------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busy_timeout_ms / 1000,
                factory=_Connection,
            )
        except sqlite3.Error as exc:
            raise map_error(exc, self.path) from None
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            if not self.memory:
                self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchall())
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = OFF")
        except sqlite3.Error as exc:
            conn.close()
            raise map_error(exc, self.path) from None
        except OncelyError:
            conn.close()
            raise
        if isinstance(conn, _Connection):
            self._all.add(conn)
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailable(f"the store for {self.path!r} has been closed")
        if self.memory:
            if self._shared is None:
                self._shared = self._open()
            return self._shared
        if os.getpid() != self._pid:
            # A forked child must not share its parent's connections.
            self._pid = os.getpid()
            self._local = threading.local()
            self._all = weakref.WeakSet()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def session(self) -> Iterator[sqlite3.Connection]:
        """The calling thread's connection (the locked shared one for ``:memory:``)."""
        if self.memory:
            with self._memory_lock:
                yield self._connection()
        else:
            yield self._connection()

    def close(self) -> None:
        self._closed = True
        for conn in list(self._all):
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._all = weakref.WeakSet()
        self._shared = None
        self._local = threading.local()

    # transactions -----------------------------------------------------------------------------

    def _retry(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it gets past SQLite's lock, for at most the busy budget."""
        deadline = time.monotonic() + self.busy_budget
        delay = 0.005
        while True:
            try:
                return attempt()
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise StoreBusy(
                        f"SQLite database {self.path!r} stayed locked for over "
                        f"{self.busy_budget:.0f} s; another process holds a long write transaction"
                    ) from None
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.25)

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in its own write transaction, retried whole while the database is locked.
        Inside :meth:`transaction` on the same thread it joins that transaction instead."""
        with self.session() as conn:
            if conn.in_transaction:
                return self._mapped(lambda: work(conn))

        def attempt() -> T:
            with self._write_lock, self.session() as conn:
                return committed(conn, "BEGIN IMMEDIATE", work)

        result = self._mapped(lambda: self._retry(attempt))
        self._notify()
        return result

    def write_if_needed(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in a transaction that takes SQLite's write lock only at its first write
        (``BEGIN DEFERRED``): when ``work`` only reads (a claim that finds nothing to start) the
        lock is never taken, so a process stopped in the middle of it (SIGSTOP, a debugger)
        blocks nobody; when it writes, the lock is held from that write to the commit only.

        It stays one atomic transaction: SQLite lets a read transaction become a write one
        only if nobody else wrote since its first read. Otherwise (or while another process
        holds the lock) the first write fails at once with SQLITE_BUSY, and ``work`` runs again
        whole in :meth:`write`."""
        with self.session() as conn:
            if conn.in_transaction:
                return self._mapped(lambda: work(conn))
        try:
            with self._write_lock, self.session() as conn:
                before = conn.total_changes
                result = committed(conn, "BEGIN", work)
                wrote = conn.total_changes != before
        except sqlite3.Error as exc:
            if not is_busy(exc):
                raise map_error(exc, self.path) from exc
            return self.write(work)
        if wrote:
            self._notify()
        return result

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self.session() as conn:
            return self._mapped(lambda: self._retry(lambda: work(conn)))

    def _mapped(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except sqlite3.Error as exc:
            raise map_error(exc, self.path) from exc

    @contextlib.contextmanager
    def joined(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """Work on a caller's connection, inside the caller's transaction, with errors mapped."""
        try:
            yield conn
        except sqlite3.Error as exc:
            raise map_error(exc, self.path) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The thread's connection inside ``BEGIN IMMEDIATE`` … ``COMMIT``; nested use joins the
        outer transaction."""
        with self.session() as conn:
            if conn.in_transaction:
                yield conn
                return
            with self._write_lock:
                self._mapped(lambda: self._retry(lambda: conn.execute("BEGIN IMMEDIATE")))
                try:
                    yield conn
                except BaseException:
                    rollback(conn)
                    raise
                try:
                    self._retry(lambda: conn.execute("COMMIT"))
                except sqlite3.Error as exc:
                    rollback(conn)
                    raise map_error(exc, self.path) from exc
                except OncelyError:
                    rollback(conn)
                    raise
        self._notify()

    # change notification --------------------------------------------------------------------

    def _notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _data_version(self) -> int:
        if self.memory:
            return 0
        return int(self.read(lambda conn: conn.execute("PRAGMA data_version").fetchone()[0]))

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True as soon as anyone commits to the database."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            generation = self._generation
        version = self._data_version()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                if self._changed.wait_for(
                    lambda: self._generation != generation, min(WAIT_STEP, remaining)
                ):
                    return True
            if self._data_version() != version:
                return True
