"""Where a PostgreSQL URL points and what its failures mean: URL parsing (oncely's own
``schema``, ``pool_max`` and ``listen`` parameters are stripped before libpq sees the URL, and the
session options oncely needs are added) and the mapping of psycopg errors to :mod:`oncely.errors`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from oncely.errors import (
    InvalidURL,
    OncelyError,
    SchemaMismatch,
    StoreBusy,
    StoreError,
    StoreUnavailable,
)

T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]

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
RANDOM_PAGE_COST = 1.1  # the planner's cost of a page read out of order (see parse_url)

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
    # jit=off: oncely's statements touch a few rows each, but a planner estimate past
    # jit_above_cost (a generate_series bound it cannot know, a table not yet analysed) made
    # the server compile a claim for 0.5-2 s, at every execution.
    # random_page_cost=1.1: they look rows up by key in tables the server keeps in memory; at
    # the stock 4 (a cost for spinning disks) the planner read a whole jobs table of 20,000
    # rows to record 144 finishes (~2 ms) rather than look them up by id (~0.2 ms).
    options = (
        f"-c search_path={schema} -c TimeZone=UTC "
        f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} -c jit=off "
        f"-c random_page_cost={RANDOM_PAGE_COST}"
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
