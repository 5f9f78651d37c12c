"""PostgreSQL plumbing for :class:`~oncely.store.postgres.store.PostgresStore`.

Owns the connection pool and transactions; the URL and the mapping of psycopg errors are in
``target.py``, the LISTEN connection behind ``wait_for_work`` in ``listen.py``.

Failure model: the first use probes the server with one direct connection, so an unreachable
server is reported in one line instead of a pool retrying in the background. Later, connections
killed by a server restart or ``pg_terminate_backend`` are noticed when they are checked out
(their socket turns readable) and replaced. An operation that loses its connection anyway raises
:class:`~oncely.errors.StoreUnavailable` (the caller backs off) and makes the next checkout probe
the server first: during an outage every call fails at once, and the first call after it gets a
fresh pool (see :class:`Engine`).

Prepared statements and migrations: frequent statements run as server-side prepared statements
(explicitly for the hot ones, by psycopg after five runs for the rest). A migration that changes
the columns a prepared ``SELECT *`` or ``RETURNING *`` returns makes the server refuse that
statement on every connection that prepared it ("cached plan must not change result type"). The
first connection to meet it drops its prepared statements and the operation is retried; every
other pooled connection drops its own at its next checkout, so a worker that was running when
``oncely migrate`` added columns keeps working (see docs/migrations.md).

The last connection given back is the next one handed out. psycopg_pool queues idle connections
first in, first out, so one caller making one call after another went round every idle
connection in turn, each time waking another server process with cold caches (a single enqueue
took ~190 µs longer on four connections in turn than on one). The engine keeps the connection
last given back in a slot of its own and hands it out first; it goes to the pool instead while a
caller waits for one there, so no caller waits on the pool while a connection sits idle.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from oncely.errors import OncelyError, StoreBusy, StoreUnavailable
from oncely.store.postgres.target import (
    BUSY_ATTEMPTS,
    POOL_MAX_IDLE,
    POOL_TIMEOUT,
    RECONNECT_TIMEOUT,
    Conn,
    Target,
    is_busy,
    map_error,
    unreachable,
)

T = TypeVar("T")


# the pool ---------------------------------------------------------------------------------------


def _json_loads(data: str | bytes) -> Any:
    # psycopg hands json/jsonb columns over as bytes; json.loads would sniff their encoding
    # first. Empty objects and arrays (args, errors of most claimed jobs) need no parser.
    if data == b"{}":
        return {}
    if data == b"[]":
        return []
    return json.loads(data.decode() if isinstance(data, bytes) else data)


def _stale_plan(exc: BaseException) -> bool:
    """The server refused a prepared statement whose result columns changed under it."""
    if not isinstance(exc, psycopg.Error) or exc.sqlstate != "0A000":
        return False
    return (exc.diag.source_function == "RevalidateCachedQuery"
            or "cached plan must not change result type" in str(exc))


def _configure(conn: Conn) -> None:
    """Set up each pooled connection once, when the pool opens it."""
    set_json_loads(_json_loads, conn)


def _healthy(conn: Conn) -> bool:
    """Checkout check, free for a healthy idle connection: a server that terminated the backend
    (shutdown, restart, ``pg_terminate_backend``) has sent an error and closed the socket, which
    then reads as ready. Only then does a round trip confirm the damage."""
    if conn.closed or conn.broken:
        return False
    try:
        ready = _readable(conn.fileno())
    except (OSError, ValueError):
        ready = True
    if ready:
        try:
            ConnectionPool.check_connection(conn)
        except psycopg.Error:
            return False
    return True


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


class _PoolDropped(Exception):
    """The pool was closed under a checkout by another thread's failed probe."""


class _PoolBox:
    """The engine's current pool and the connection given back last (see the module doc), in a
    box its finalizer can hold without holding the engine."""

    pool: ConnectionPool[Conn] | None = None
    hot: tuple[ConnectionPool[Conn], Conn] | None = None


def _close_pool(box: _PoolBox) -> None:
    pool, box.pool = box.pool, None
    hot, box.hot = box.hot, None
    if hot is not None:
        with contextlib.suppress(Exception):
            hot[0].putconn(hot[1])
    if pool is None:
        return
    if threading.current_thread() is threading.main_thread():
        pool.close(timeout=5.0)
    else:
        # Garbage collection can run this in a pool worker, which cannot join itself.
        threading.Thread(target=pool.close, kwargs={"timeout": 5.0}, daemon=True).start()


class Engine:
    """The pool, transactions and wake-ups for one PostgreSQL URL.

    After an operation loses its connection the engine is *suspect*: the next checkout first
    probes the server. While the server is down the probe fails at once (StoreUnavailable) and
    the pool is dropped, which also stops its background reconnection attempts; the first probe
    that succeeds builds a fresh pool, free of the old one's growing reconnection backoff.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        # Reentrant: a failed probe inside _ensure_pool drops the pool under the same lock.
        self._lock = threading.RLock()
        self._box = _PoolBox()
        # A store nobody closed still closes its pool, never from one of the pool's own threads.
        weakref.finalize(self, _close_pool, self._box)
        self._pid = os.getpid()
        self._closed = False
        self._suspect = False
        self._local = threading.local()  # .conn: the thread's open transaction, if any
        # Bumped when a migration made prepared statements stale; a pooled connection whose
        # statements are older drops them at checkout.
        self._plans = 0
        self._conn_plans: weakref.WeakKeyDictionary[Conn, int] = weakref.WeakKeyDictionary()
        # How many callers are asking the pool for a connection; guarded by _hot_lock, as is
        # the box's hot slot (the connection given back last, handed out first).
        self._asking = 0
        self._hot_lock = threading.Lock()

    # connections --------------------------------------------------------------------------------

    def _ensure_pool(self) -> ConnectionPool[Conn]:
        if os.getpid() != self._pid:
            # A forked child must not share its parent's sockets.
            self._pid = os.getpid()
            self._box.pool = None
            self._box.hot = None
        pool = self._box.pool
        if pool is not None:
            return pool
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"the store for PostgreSQL at {self.target.where} is closed")
            if self._box.pool is None:
                self.probe()
                pool = ConnectionPool(
                    self.target.conninfo,
                    min_size=1,
                    max_size=self.target.pool_max,
                    max_idle=POOL_MAX_IDLE,
                    open=False,
                    timeout=POOL_TIMEOUT,
                    reconnect_timeout=RECONNECT_TIMEOUT,
                    name=f"oncely:{self.target.schema}",
                    configure=_configure,
                )
                pool.open(wait=False)
                self._box.pool = pool
            return self._box.pool

    def probe(self) -> None:
        """Connect once, directly, so an unreachable server fails fast with libpq's reason."""
        try:
            psycopg.connect(self.target.conninfo).close()
        except psycopg.Error as exc:
            self._drop_pool()
            raise unreachable(self.target.where, exc) from None
        self._suspect = False

    def _drop_pool(self) -> None:
        with self._lock:
            pool, self._box.pool = self._box.pool, None
        self._put_hot_back()
        if pool is not None:
            # Closing waits for the pool's workers, which may be inside a connect attempt.
            threading.Thread(target=pool.close, kwargs={"timeout": 10.0}, daemon=True).start()

    def _checkout(self) -> tuple[ConnectionPool[Conn], Conn]:
        """A live pooled connection: the one given back last if it is still there, else one from
        the pool. A dead one is handed back (the pool replaces it) and the server probed, so a
        server that went away is reported at once rather than after the pool's timeout; a
        restarted server gets a fresh pool."""
        probed = False
        while True:
            if self._suspect and not probed:
                self.probe()
                probed = True
            pool = self._ensure_pool()
            with self._hot_lock:
                hot, self._box.hot = self._box.hot, None
            if hot is not None and hot[0] is not pool:
                hot[0].putconn(hot[1])  # from a pool dropped since: that pool disposes of it
                continue
            if hot is not None:
                conn = hot[1]
            else:
                try:
                    conn = self._getconn(pool)
                except _PoolDropped:
                    continue
            if _healthy(conn):
                if probed:
                    self._suspect = False
                if self._conn_plans.setdefault(conn, self._plans) != self._plans:
                    self._forget_plans(conn)
                return pool, conn
            pool.putconn(conn)
            self._suspect = True

    def _getconn(self, pool: ConnectionPool[Conn]) -> Conn:
        """A connection from the pool; while this waits, connections given back go to the pool
        (see :meth:`_give_back`)."""
        with self._hot_lock:
            self._asking += 1
        try:
            return pool.getconn()
        except PoolClosed:
            if self._closed:
                raise StoreUnavailable(
                    f"the store for PostgreSQL at {self.target.where} is closed"
                ) from None
            raise _PoolDropped from None  # by another thread's failed probe: rebuild it
        except PoolTimeout:
            self.probe()  # raises with the reason when the server is gone
            raise StoreBusy(
                f"all {self.target.pool_max} connections to PostgreSQL at "
                f"{self.target.where} stayed busy for {POOL_TIMEOUT:.0f} s; "
                "raise pool_max= in the database URL"
            ) from None
        finally:
            with self._hot_lock:
                self._asking -= 1

    def _give_back(self, pool: ConnectionPool[Conn], conn: Conn) -> None:
        """Return ``conn``, in the calling thread: into the engine's slot for the next checkout
        when it is free and nobody waits on the pool, else to the pool. A connection still in
        autocommit (see :meth:`run`: its setter failed) would break the atomicity of the next
        transaction run on it: it is closed, and the pool replaces it. (The pool's own
        ``reset`` hook would do the same check, but it hands every returned connection to the
        pool's worker thread: a thread hop per store call, most of a single enqueue's CPU.)"""
        if conn.autocommit:
            with contextlib.suppress(Exception):
                conn.close()
        elif not conn.closed and pool is self._box.pool:
            with self._hot_lock:
                if self._box.hot is None and not self._asking:
                    self._box.hot = (pool, conn)
                    return
        pool.putconn(conn)

    def _put_hot_back(self) -> None:
        """The connection in the engine's slot goes back to its pool."""
        with self._hot_lock:
            hot, self._box.hot = self._box.hot, None
        if hot is not None:
            with contextlib.suppress(Exception):
                hot[0].putconn(hot[1])

    def _forget_plans(self, conn: Conn, stale: bool = False) -> None:
        """Drop ``conn``'s prepared statements (psycopg forgets its own on DEALLOCATE ALL);
        ``stale``: the server refused one, so every other pooled connection drops its own too."""
        if stale:
            self._plans += 1
        with contextlib.suppress(psycopg.Error):
            conn.execute("DEALLOCATE ALL")
            conn.commit()
        self._conn_plans[conn] = self._plans

    def _lost(self, conn: Conn) -> bool:
        """After an error on ``conn``: True (and the engine suspect) if the connection is gone."""
        if conn.broken or conn.closed:
            self._suspect = True
            return True
        return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._box.pool = self._box.pool, None
        self._put_hot_back()
        if pool is not None:
            pool.close(timeout=5.0)

    def mapped(self, exc: psycopg.Error) -> OncelyError:
        return map_error(exc, self.target.where, self.target.schema)

    # transactions -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, map_body: bool = True) -> Iterator[Conn]:
        """A pooled connection inside a transaction: committed on exit, rolled back on error.
        ``map_body=False`` lets psycopg errors raised by the caller's own statements through.
        Store calls the same thread makes inside the block (and nested transactions) join it,
        as on SQLite: they commit or roll back with it, and cannot wait on its row locks."""
        outer: Conn | None = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        pool, conn = self._checkout()
        self._local.conn = conn
        try:
            try:
                yield conn
            except BaseException as exc:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                cause = exc.__cause__ or exc
                if not self._lost(conn) and (_stale_plan(exc) or _stale_plan(cause)):
                    self._forget_plans(conn, stale=True)  # the caller's retry will work
                if map_body and isinstance(exc, psycopg.Error):
                    raise self.mapped(exc) from exc
                raise
            try:
                conn.commit()
            except psycopg.Error as exc:
                self._lost(conn)
                raise self.mapped(exc) from exc
        finally:
            self._local.conn = None
            self._give_back(pool, conn)

    def run(self, work: Callable[[Conn], T], *, autocommit: bool = False) -> T:
        """Run ``work`` in its own transaction. A transaction lost to a deadlock or a
        serialization failure is retried whole; so is one whose connection died before COMMIT
        was sent (nothing of it was applied). Inside :meth:`transaction` on the same thread,
        ``work`` joins that transaction instead.

        ``autocommit=True``: no explicit transaction, each statement ``work`` sends is its own,
        so a one-statement operation costs one round trip instead of three (BEGIN, the
        statement, COMMIT). Contention is retried the same way; a lost connection is not
        (whether the statement committed is unknown)."""
        outer: Conn | None = getattr(self._local, "conn", None)
        if outer is not None:
            return self.joined(outer, work)
        attempt = 0
        while True:
            attempt += 1
            pool, conn = self._checkout()
            try:
                try:
                    if conn.autocommit is not autocommit:  # psycopg's setter runs a wait
                        conn.autocommit = autocommit
                    result = work(conn)
                except psycopg.Error as exc:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                    lost = self._lost(conn)
                    stale = not lost and _stale_plan(exc)
                    if stale:
                        self._forget_plans(conn, stale=True)
                    retry = (attempt < BUSY_ATTEMPTS and (is_busy(exc) or stale)) or (
                        lost and attempt == 1 and not autocommit
                    )
                    if not retry:
                        raise self.mapped(exc) from exc
                    time.sleep(random.uniform(0.001, 0.01 * attempt))
                    continue
                except BaseException:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                    raise
                if autocommit:
                    return result
                try:
                    conn.commit()
                except psycopg.Error as exc:
                    # The outcome of a COMMIT that lost its connection is unknown: never retried.
                    self._lost(conn)
                    raise self.mapped(exc) from exc
                return result
            finally:
                if autocommit:
                    # Back to transactions before the pool hands it out again (_give_back
                    # closes a connection that is still in autocommit).
                    with contextlib.suppress(psycopg.Error):
                        conn.autocommit = False
                self._give_back(pool, conn)

    def joined(self, conn: Any, work: Callable[[Any], T]) -> T:
        """Run ``work`` on a caller's connection, inside the caller's transaction."""
        try:
            return work(conn)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._suspect = True
            raise self.mapped(exc) from exc
