"""PostgreSQL plumbing for :class:`~oncely.store.postgres.PostgresStore`.

Owns URL parsing (oncely's own ``schema``, ``pool_max`` and ``listen`` parameters are stripped
before libpq sees the URL), the connection pool, transactions and the mapping of psycopg errors to
:mod:`oncely.errors`. The LISTEN connection behind ``wait_for_work`` is in ``_pg_listen``.

Failure model: the first use probes the server with one direct connection, so an unreachable
server is reported in one line instead of a pool retrying in the background. Later, connections
killed by a server restart or ``pg_terminate_backend`` are noticed when they are checked out
(their socket turns readable) and replaced. An operation that loses its connection anyway raises
:class:`~oncely.errors.StoreUnavailable` (the caller backs off) and makes the next checkout probe
the server first: during an outage every call fails at once, and the first call after it gets a
fresh pool (see :class:`Engine`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from oncely.errors import (
    InvalidURL,
    OncelyError,
    SchemaMismatch,
    StoreBusy,
    StoreError,
    StoreUnavailable,
)
from oncely.store.sqlfiles import load_queries

T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]

Q = load_queries("postgres")

CONNECT_TIMEOUT = 5  # seconds libpq waits for a server before giving up
POOL_MAX = 10
POOL_TIMEOUT = 10.0  # seconds an operation waits for a pooled connection
POOL_MAX_IDLE = 60.0  # seconds before an idle connection beyond the first one is closed
RECONNECT_TIMEOUT = 15.0  # the pool stops replacing a lost connection after this long
BUSY_ATTEMPTS = 4  # a transaction lost to a deadlock or serialization failure is retried
# The server ends a session left idle inside a transaction this long (ms): a worker paused or
# hung mid-transaction (SIGSTOP, a debugger, a stalled VM) must not hold the job and lease rows
# the rest of the fleet needs. Our own transactions never idle; callers' transactions may not
# idle longer either (override with options=-c idle_in_transaction_session_timeout=… in the URL).
IDLE_IN_TRANSACTION_MS = 10_000

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_OWN_PARAMS = ("schema", "pool_max", "listen")
_BUSY_STATES = ("40001", "40P01", "55P03")  # serialization, deadlock, lock not available


@dataclass(frozen=True)
class Target:
    """Where a PostgreSQL URL points, as oncely uses it."""

    conninfo: str  # for libpq: the URL without oncely's parameters, plus our session options
    schema: str
    pool_max: int
    where: str  # host:port/db, for messages (never the password)
    listen: bool = True  # idle workers wait on LISTEN; listen=off: they poll (poll_interval)


def parse_url(url: str) -> Target:
    try:
        parts = urlsplit(url.strip())
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise InvalidURL(f"malformed PostgreSQL URL: {exc}") from None
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise InvalidURL(f"not a PostgreSQL URL: {url!r}; use postgresql://user@host:port/db")
    own = {key: value for key, value in query if key in _OWN_PARAMS}
    rest = [(key, value) for key, value in query if key not in _OWN_PARAMS]
    schema = _schema_name(own.get("schema", "public"))
    pool_max = _pool_max(own.get("pool_max"))
    listen = _listen(own.get("listen"))
    # libpq decodes %20, not "+": keep spaces (as in options=-c a=b -c c=d) percent-encoded.
    query_text = urlencode(rest, quote_via=quote)
    libpq_url = urlunsplit(("postgresql", parts.netloc, parts.path, query_text, ""))
    try:
        given = conninfo_to_dict(libpq_url)
    except psycopg.ProgrammingError as exc:
        raise InvalidURL(f"malformed PostgreSQL URL: {_first_line(exc)}") from None
    options = (
        f"-c search_path={schema} -c TimeZone=UTC "
        f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
    )
    if given.get("options"):  # the URL's own options come last, so they can override ours
        options = f"{options} {given['options']}"
    extra: dict[str, Any] = {"options": options}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = CONNECT_TIMEOUT
    if "application_name" not in given:
        extra["application_name"] = "oncely"
    host = given.get("host") or given.get("hostaddr") or "localhost"
    where = f"{host}:{given.get('port') or 5432}/{given.get('dbname') or given.get('user') or ''}"
    return Target(make_conninfo(libpq_url, **extra), schema, pool_max, where, listen)


def _schema_name(value: str) -> str:
    if not _SCHEMA_NAME.match(value):
        raise InvalidURL(
            f"invalid schema {value!r} in the PostgreSQL URL: use letters, digits and "
            "underscores, not starting with a digit (at most 63)"
        )
    # Unquoted identifiers fold to lower case in PostgreSQL; search_path must name the same schema.
    return value.lower()


def _listen(value: str | None) -> bool:
    if value is None or value.lower() in ("on", "true", "1"):
        return True
    if value.lower() in ("off", "false", "0"):
        return False
    raise InvalidURL(f"invalid listen={value!r} in the PostgreSQL URL: use on or off")


def _pool_max(value: str | None) -> int:
    if value is None:
        return POOL_MAX
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise InvalidURL(f"invalid pool_max={value!r} in the PostgreSQL URL: use a number >= 1")
    return number


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line.removeprefix("connection failed: ").strip()


# errors -----------------------------------------------------------------------------------------


def unreachable(where: str, exc: BaseException) -> StoreUnavailable:
    reason = _first_line(exc)
    lowered = reason.lower()
    if "password" in lowered or "authentication" in lowered:
        hint = "check the user and password in the database URL"
    elif "does not exist" in lowered:
        hint = "create it or fix the database URL"
    else:
        hint = "is the server running?"
    return StoreUnavailable(f"cannot connect to PostgreSQL at {where}: {reason}; {hint}")


def is_busy(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.Error) and exc.sqlstate in _BUSY_STATES


def map_error(exc: psycopg.Error, where: str, schema: str) -> OncelyError:
    """The oncely error a caller can act on for a psycopg failure."""
    text = _first_line(exc)
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName) and (
        "oncely_" in text or schema in text
    ):
        return SchemaMismatch(
            f"PostgreSQL schema {schema!r} at {where} has no oncely tables ({text}); "
            "run `oncely migrate`"
        )
    if is_busy(exc):
        return StoreBusy(f"PostgreSQL at {where} reported contention: {text}")
    if isinstance(exc, pg_errors.QueryCanceled):
        return StoreError(f"PostgreSQL at {where} cancelled a statement: {text}")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(f"lost the connection to PostgreSQL at {where}: {text}")
    if isinstance(exc, psycopg.IntegrityError):
        return StoreError(f"PostgreSQL at {where} refused a write: {text}")
    return StoreError(f"PostgreSQL error at {where}: {text}")


# the pool ---------------------------------------------------------------------------------------


def _json_loads(data: str | bytes) -> Any:
    # psycopg hands json/jsonb columns over as bytes; json.loads would sniff their encoding
    # first. Empty objects and arrays (args, errors of most claimed jobs) need no parser.
    if data == b"{}":
        return {}
    if data == b"[]":
        return []
    return json.loads(data.decode() if isinstance(data, bytes) else data)


def _configure(conn: Conn) -> None:
    """Set up each pooled connection once, when the pool opens it."""
    set_json_loads(_json_loads, conn)


def _reset(conn: Conn) -> None:
    """On return to the pool: a connection left in autocommit (see :meth:`Engine.run`) would
    break the atomicity of the next transaction run on it; the pool discards it instead."""
    if conn.autocommit:
        raise psycopg.InterfaceError("connection returned in autocommit mode")


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


class _PoolBox:
    """The engine's current pool, in a box its finalizer can hold without holding the engine."""

    pool: ConnectionPool[Conn] | None = None


def _close_pool(box: _PoolBox) -> None:
    pool, box.pool = box.pool, None
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

    # connections --------------------------------------------------------------------------------

    def _ensure_pool(self) -> ConnectionPool[Conn]:
        if os.getpid() != self._pid:
            # A forked child must not share its parent's sockets.
            self._pid = os.getpid()
            self._box.pool = None
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
                    reset=_reset,
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
        if pool is not None:
            # Closing waits for the pool's workers, which may be inside a connect attempt.
            threading.Thread(target=pool.close, kwargs={"timeout": 10.0}, daemon=True).start()

    def _checkout(self) -> tuple[ConnectionPool[Conn], Conn]:
        """A live pooled connection. A dead one is handed back (the pool replaces it) and the
        server probed, so a server that went away is reported at once rather than after the
        pool's timeout; a restarted server gets a fresh pool."""
        probed = False
        while True:
            if self._suspect and not probed:
                self.probe()
                probed = True
            pool = self._ensure_pool()
            try:
                conn = pool.getconn()
            except PoolClosed:
                if self._closed:
                    raise StoreUnavailable(
                        f"the store for PostgreSQL at {self.target.where} is closed"
                    ) from None
                continue  # dropped by another thread's failed probe: rebuild it
            except PoolTimeout:
                self.probe()  # raises with the reason when the server is gone
                raise StoreBusy(
                    f"all {self.target.pool_max} connections to PostgreSQL at "
                    f"{self.target.where} stayed busy for {POOL_TIMEOUT:.0f} s; "
                    "raise pool_max= in the database URL"
                ) from None
            if _healthy(conn):
                if probed:
                    self._suspect = False
                return pool, conn
            pool.putconn(conn)
            self._suspect = True

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
                self._lost(conn)
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
            pool.putconn(conn)

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
                    conn.autocommit = autocommit
                    result = work(conn)
                except psycopg.Error as exc:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                    lost = self._lost(conn)
                    retry = (attempt < BUSY_ATTEMPTS and is_busy(exc)) or (
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
                    # Back to transactions before the pool hands it out again (the pool's reset
                    # check discards a connection that is still in autocommit).
                    with contextlib.suppress(psycopg.Error):
                        conn.autocommit = False
                pool.putconn(conn)

    def joined(self, conn: Any, work: Callable[[Any], T]) -> T:
        """Run ``work`` on a caller's connection, inside the caller's transaction."""
        try:
            return work(conn)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._suspect = True
            raise self.mapped(exc) from exc
