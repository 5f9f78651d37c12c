"""Conformance: a database migrated by oncely 0.1 upgrades in place.

``release_0_1/<dialect>/`` holds the migration files as 0.1 shipped them (SQLite stopped at
version 3, PostgreSQL at 5) and the fixtures below apply them the way 0.1 did. Today every dialect
numbers its steps alike (SQLite's 4 and 5 are no-ops), so the upgrade must apply exactly the
versions the database lacks, never one it has, and leave the same schema a new database gets.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import POSTGRES_ENV, Kit, with_query
from oncely.clock import FrozenClock
from oncely.errors import SchemaMismatch
from oncely.store import open_store
from oncely.store.base import Store
from oncely.store.migrations import latest_version, migrations_for
from oncely.types import JobState

RELEASE = Path(__file__).parent / "release_0_1"


def _old_files(dialect: str) -> list[tuple[int, str, str]]:
    found = []
    for path in sorted((RELEASE / dialect).glob("*.sql")):
        number, _, rest = path.name.partition("_")
        found.append((int(number), rest.removesuffix(".sql"), path.read_text("utf-8")))
    return found


def _sqlite_0_1(path: Path) -> tuple[str, int]:
    """A SQLite database as ``oncely migrate`` of 0.1 left it."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE oncely_schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    files = _old_files("sqlite")
    for version, name, script in files:
        conn.executescript(script)
        conn.execute("INSERT INTO oncely_schema_migrations VALUES (?, ?, ?)", (version, name, 0.0))
        conn.commit()
    conn.close()
    return f"sqlite:///{path}", files[-1][0]


def _sqlite_schema(store: Store) -> set[tuple[Any, ...]]:
    with store.transaction() as conn:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "AND name != 'oncely_schema_migrations'"
        ).fetchall()
    return {tuple(row) for row in rows}


_PG_SHAPE = """
SELECT 'column', table_name || '.' || column_name || ' ' || data_type
FROM information_schema.columns WHERE table_schema = current_schema()
UNION ALL SELECT 'index', indexname || ' ' || indexdef FROM pg_indexes
WHERE schemaname = current_schema()
UNION ALL SELECT 'trigger', tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND NOT t.tgisinternal
UNION ALL SELECT 'function', p.proname || ' ' || md5(p.prosrc) || ' ' || COALESCE((
    SELECT string_agg(setting, ',' ORDER BY setting) FROM unnest(p.proconfig) AS setting
    WHERE setting NOT LIKE 'search_path=%'), '') FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = current_schema()
"""


def _pg_schema(store: Store) -> set[tuple[Any, ...]]:
    with store.transaction() as conn:
        rows = conn.execute(_PG_SHAPE).fetchall()
    # Index definitions name their schema; two schemas compare by what is in them.
    schema = str(getattr(store, "schema", ""))
    return {(kind, text.replace(f"{schema}.", "")) for kind, text in rows}


@pytest.fixture
def postgres_schemas() -> Iterator[tuple[str, list[str]]]:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} not set")
    import psycopg

    made: list[str] = []
    yield url, made
    with psycopg.connect(url, autocommit=True) as admin:
        for schema in made:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _postgres_0_1(url: str, made: list[str]) -> tuple[str, int]:
    """A PostgreSQL schema as ``oncely migrate`` of 0.1 left it."""
    import psycopg

    schema = f"oncely_u_{uuid.uuid4().hex[:16]}"
    made.append(schema)
    files = _old_files("postgres")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path = "{schema}"')
        conn.execute(
            "CREATE TABLE oncely_schema_migrations (version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
        )
        for version, name, script in files:
            with conn.transaction():
                conn.execute(script.encode())
                conn.execute(
                    "INSERT INTO oncely_schema_migrations VALUES (%s, %s, %s)",
                    (version, name, datetime.now(UTC)),
                )
    return with_query(url, schema=schema), files[-1][0]


def _fresh_postgres(url: str, made: list[str]) -> str:
    schema = f"oncely_u_{uuid.uuid4().hex[:16]}"
    made.append(schema)
    return with_query(url, schema=schema)


def _check_upgrade(old_url: str, old_version: int, fresh_url: str, dialect: str) -> None:
    store, fresh = open_store(old_url), open_store(fresh_url)
    try:
        assert store.schema_version() == old_version
        latest = latest_version(dialect)
        if old_version < latest:
            with pytest.raises(SchemaMismatch, match="run `oncely migrate`"):
                store.check_schema()
        result = store.migrate()
        expected = tuple(m.label for m in migrations_for(dialect) if m.version > old_version)
        assert (result.from_version, result.to_version, result.applied) == (
            old_version, latest, expected,
        )
        assert store.migrate().applied == ()  # nothing is ever applied twice
        store.check_schema()
        with store.transaction() as conn:
            recorded = conn.execute(
                "SELECT version, name FROM oncely_schema_migrations ORDER BY version"
            ).fetchall()
        assert [tuple(row) for row in recorded] == [
            (m.version, m.name) for m in migrations_for(dialect)
        ]
        fresh.migrate()
        shape = _sqlite_schema if dialect == "sqlite" else _pg_schema
        assert shape(store) == shape(fresh)
        kit = Kit(store, FrozenClock("2026-03-02T09:00:00+00:00"))
        job = kit.insert()
        assert kit.finish(kit.claim_one())
        assert kit.get(job.id).state == JobState.SUCCEEDED
    finally:
        store.close()
        fresh.close()


def test_sqlite_database_of_release_0_1_upgrades(tmp_path: Path) -> None:
    old_url, old_version = _sqlite_0_1(tmp_path / "old.db")
    assert old_version == 3
    _check_upgrade(old_url, old_version, f"sqlite:///{tmp_path / 'new.db'}", "sqlite")


@pytest.mark.postgres
def test_postgres_schema_of_release_0_1_upgrades(
    postgres_schemas: tuple[str, list[str]],
) -> None:
    url, made = postgres_schemas
    old_url, old_version = _postgres_0_1(url, made)
    assert old_version == 5
    _check_upgrade(old_url, old_version, _fresh_postgres(url, made), "postgresql")


def test_every_dialect_numbers_and_names_its_migrations_alike() -> None:
    labels = {d: [m.label for m in migrations_for(d)] for d in ("sqlite", "postgresql")}
    assert labels["sqlite"] == labels["postgresql"]
    # The released steps keep their numbers and names.
    for dialect, folder in (("sqlite", "sqlite"), ("postgresql", "postgres")):
        released = [f"{v:04d}_{n}" for v, n, _ in _old_files(folder)]
        assert labels[dialect][: len(released)] == released
