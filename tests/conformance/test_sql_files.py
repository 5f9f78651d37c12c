"""Conformance: the public named-SQL loader and migration runner (:mod:`oncely.sql`), which
applications use for their own tables in the job store's database, on every store."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from oncely import sql
from oncely.errors import SchemaMismatch
from oncely.store.base import Store


def test_named_queries_and_migrations_of_a_package() -> None:
    queries = sql.load_queries("oncely.store.sqlite", "sql")
    assert "job_get" in queries
    with pytest.raises(KeyError, match=r"no query 'nope' in oncely.store.sqlite/sql"):
        queries["nope"]
    labels = [m.label for m in sql.load_migrations("oncely.store.sqlite", "migrations")]
    assert labels[:3] == ["0001_initial", "0002_observability", "0003_queue_controls"]


def test_a_query_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'a' is defined twice"):
        sql.parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_statements_of_a_script() -> None:
    script = "-- a comment\nCREATE TABLE t (x TEXT DEFAULT ';');\n-- only a comment;\nSELECT 1"
    first, second = sql.split_statements(script)  # comment-only pieces are dropped
    assert first.endswith("CREATE TABLE t (x TEXT DEFAULT ';');")
    assert second.endswith("SELECT 1")


class ToyLedger:
    """An application's own record of its versions, next to the engine's tables."""

    def __init__(self, store: Store) -> None:
        self.sqlite = store.dialect == "sqlite"
        self.locks = 0

    def lock(self, conn: Any) -> None:
        self.locks += 1
        if not self.sqlite:
            conn.execute("SELECT pg_advisory_xact_lock(4242)")

    def prepare(self, conn: Any) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS toy_versions (version INTEGER PRIMARY KEY)")

    def version(self, conn: Any) -> int:
        return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM toy_versions").fetchone()[0])

    def run(self, conn: Any, script: str) -> None:
        for statement in sql.split_statements(script):
            conn.execute(statement)

    def record(self, conn: Any, migration: sql.Migration) -> None:
        conn.execute(f"INSERT INTO toy_versions VALUES ({int(migration.version)})")


def _run(store: Store, work: Any) -> Any:
    with store.transaction() as conn:
        return work(conn)


TOY = (
    sql.Migration(1, "toys", "CREATE TABLE toys (name TEXT);"),
    sql.Migration(2, "toy_colour", "ALTER TABLE toys ADD COLUMN colour TEXT;"),
)


def test_migrate_applies_each_version_once(store: Store) -> None:
    ledger = ToyLedger(store)
    run = partial(_run, store)
    first = sql.migrate(run, ledger, TOY[:1], "the toy schema")
    assert (first.from_version, first.to_version, first.applied) == (0, 1, ("0001_toys",))
    second = sql.migrate(run, ledger, TOY, "the toy schema")
    assert (second.from_version, second.to_version, second.applied) == (1, 2, ("0002_toy_colour",))
    assert sql.migrate(run, ledger, TOY, "the toy schema").applied == ()
    _run(store, lambda conn: conn.execute("INSERT INTO toys (name, colour) VALUES ('a', 'red')"))
    with pytest.raises(SchemaMismatch, match=r"the toy schema is version 2, newer .*\(1\)"):
        sql.migrate(run, ledger, TOY[:1], "the toy schema")
