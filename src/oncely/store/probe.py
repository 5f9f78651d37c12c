"""Looking at a database's oncely schema without changing anything.

Read-only tools (``oncely doctor``, ``jobs``, the dashboard, an ``App(url, auto_migrate=False)``)
call :func:`require_current_schema` before they open a store: opening a SQLite store creates the
file and switches it to WAL, so a mistyped path would become a new, empty "healthy" database.
Here a SQLite file is opened read-only (``mode=ro``; a missing file stays missing) and a
PostgreSQL schema is only queried (``to_regclass`` on the URL's search path). The outcomes, all
:class:`~oncely.errors.SchemaMismatch` (exit code 4) but the last:

- no file, an empty file, a foreign database or PostgreSQL schema: "holds no oncely schema";
- an older version: "run `oncely migrate`"; a newer one: "upgrade oncely";
- not a database at all, or unreachable: :class:`~oncely.errors.StoreUnavailable` (exit code 3).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from urllib.parse import quote

from oncely.errors import SchemaMismatch
from oncely.store import migrations, open_store

_CREATE_HINT = "check the database URL, or create the schema there with `oncely migrate`"


def require_current_schema(url: str) -> None:
    """Raise unless the database ``url`` names holds oncely's schema at exactly this code's
    version; never creates, migrates or writes anything."""
    dialect, where, version = read_schema_version(url)
    if version is None:
        return  # an in-memory database: nothing to protect, nothing to find
    if version == 0:
        raise SchemaMismatch(f"{where} holds no oncely schema; {_CREATE_HINT}")
    migrations.require_current(version, dialect)


def read_schema_version(url: str) -> tuple[str, str, int | None]:
    """``(dialect, where, version)`` of the database ``url`` names, read without writing;
    version 0 when it holds no oncely schema, None for ``sqlite://:memory:``."""
    if url.strip().lower().startswith("sqlite:"):
        from oncely.store.sqlite.engine import MEMORY, check_path, parse_url

        path = parse_url(url)
        if path == MEMORY:
            return "sqlite", "the in-memory database", None
        where = f"SQLite database {path!r}"
        check_path(path)  # a directory, or a missing folder: the URL is wrong (exit code 3)
        if not os.path.exists(path):
            raise SchemaMismatch(f"{where} does not exist; {_CREATE_HINT}")
        return "sqlite", where, _sqlite_version(path)
    store = open_store(url)
    try:
        where = f"PostgreSQL schema {getattr(store, 'schema', '?')!r}"
        return store.dialect, where, store.schema_version()
    finally:
        store.close()


def _sqlite_version(path: str) -> int:
    from oncely.store.dialect import queries_of
    from oncely.store.sqlite.engine import map_error

    queries = queries_of("oncely.store.sqlite")
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            if not conn.execute(queries["migrations_check_table"]).fetchone()[0]:
                return 0
            return int(conn.execute(queries["migrations_get_version"]).fetchone()[0])
    except sqlite3.Error as exc:
        raise map_error(exc, path) from None
