"""Conformance: every migration goes down and up again, with data in the tables, on every store.

Walking down one version at a time must leave, at each version, the schema a new database gets
when migrated to that version (so a down step undoes exactly its migration); the rows that
survive a step stay and the code runs on them again once the schema is back up. Rolling back to
the previous release's version must leave the schema that release created (its migration files
are kept in ``release_0_1/``), which is the schema its code ran on.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_store_upgrade import _pg_schema, _postgres_0_1, _sqlite_0_1, _sqlite_schema

from conftest import Kit, with_query
from oncely import sql
from oncely.clock import FrozenClock
from oncely.errors import SchemaMismatch
from oncely.store import open_store
from oncely.store.base import Store
from oncely.store.migrations import latest_version, migrations_for
from oncely.types import JobState


def _shape(store: Store) -> set[tuple[Any, ...]]:
    if store.dialect != "sqlite":
        return _pg_schema(store)
    # A table rebuilt by a down step (create, copy, rename) keeps the quotes of its new name.
    return {(kind, name, re.sub(r'^CREATE TABLE "([a-z_]+)"', r"CREATE TABLE \1", text or ""))
            for kind, name, text in _sqlite_schema(store)}


def _fresh_url(store: Store, tmp_path: Path, name: str) -> str:
    if store.dialect == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.db')}"
    return with_query(store.url, schema=f"{getattr(store, 'schema', '')}_{name}")


def _count(store: Store, table: str) -> int:
    with store.transaction() as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_every_migration_has_a_down_step() -> None:
    for dialect in ("sqlite", "postgresql"):
        missing = [m.label for m in migrations_for(dialect) if m.down is None]
        assert missing == [], f"{dialect}: no .down.sql for {missing}"


def test_down_one_step_at_a_time_then_up_again_with_data(store: Store, tmp_path: Path) -> None:
    clock = FrozenClock("2026-03-02T09:00:00+00:00")
    kit = Kit(store, clock)
    done = kit.insert(task="done")
    waiting = kit.insert(task="waiting", run_at=kit.later(3600))
    assert kit.finish(kit.claim_one())
    store.control_pause("billing", True, clock.now())
    latest = latest_version(store.dialect)
    shapes: dict[int, set[tuple[Any, ...]]] = {}
    try:
        for version in range(latest - 1, 0, -1):
            result = store.migrate(to=version)
            assert (result.from_version, result.to_version) == (version + 1, version)
            assert result.reverted == (migrations_for(store.dialect)[version].label,)
            fresh = open_store(_fresh_url(store, tmp_path, f"v{version}"))
            try:
                fresh.migrate(to=version)
                shapes[version] = _shape(fresh)
            finally:
                _drop(fresh)
            assert _shape(store) == shapes[version], f"down to {version} left another schema"
            assert _count(store, "oncely_jobs") == 2  # jobs survive every step but the first's
        with pytest.raises(SchemaMismatch, match="run `oncely migrate`"):
            store.check_schema()
        up = store.migrate()
        assert (up.from_version, up.to_version) == (1, latest)
        store.check_schema()
        assert kit.get(done.id).state == JobState.SUCCEEDED
        assert kit.get(waiting.id).state == JobState.SCHEDULED
        clock.advance(7200)
        assert kit.finish(kit.claim_one())
        assert kit.get(waiting.id).state == JobState.SUCCEEDED
    finally:
        store.migrate()


def test_down_to_zero_removes_everything_and_up_rebuilds(store: Store) -> None:
    Kit(store, FrozenClock("2026-03-02T09:00:00+00:00")).insert()
    result = store.migrate(to=0)
    assert result.to_version == 0 and len(result.reverted) == latest_version(store.dialect)
    # Only the record of versions is left (now empty).
    assert {row for row in _shape(store) if "oncely_schema_migrations" not in row[1]} == set()
    store.migrate()
    store.check_schema()
    assert _count(store, "oncely_jobs") == 0


def test_a_missing_down_step_refuses_before_anything_runs(store: Store) -> None:
    steps = list(migrations_for(store.dialect))
    third = steps[2]
    steps[2] = sql.Migration(third.version, third.name, third.sql, None)
    before = _shape(store)
    with pytest.raises(sql.MissingDownStep, match=f"{third.label} has no down step"):
        sql.migrate(store.sql.write, store.sql, steps, to=1)  # type: ignore[attr-defined]
    assert store.schema_version() == latest_version(store.dialect)
    assert _shape(store) == before


def test_rollback_to_the_previous_release_leaves_its_schema(store: Store, tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    if store.dialect == "sqlite":
        old_url, old_version = _sqlite_0_1(tmp_path / "release.db")
    else:
        made: list[str] = []
        old_url, old_version = _postgres_0_1(store.url.partition("?")[0], made)
        request.addfinalizer(lambda: _drop_schemas(store.url, made))
    Kit(store, FrozenClock("2026-03-02T09:00:00+00:00")).insert()
    store.migrate(to=old_version)
    release = open_store(old_url)
    try:
        assert _shape(store) == _shape(release)
    finally:
        release.close()
    assert _count(store, "oncely_jobs") == 1
    store.migrate()


def _drop(store: Store) -> None:
    """Close a throwaway store and remove what it created."""
    if store.dialect == "sqlite":
        store.close()
        return
    schema = getattr(store, "schema", "")
    with store.transaction() as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    store.close()


def _drop_schemas(url: str, schemas: list[str]) -> None:
    import psycopg

    with psycopg.connect(url.partition("?")[0], autocommit=True) as admin:
        for schema in schemas:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_sqlite_down_steps_run_in_one_transaction_each(tmp_path: Path) -> None:
    """A down step that fails halfway leaves its version and its tables as they were."""
    url = f"sqlite:///{tmp_path / 'broken.db'}"
    store = open_store(url)
    try:
        store.migrate(to=3)
        steps = list(migrations_for("sqlite"))
        last = steps[2]
        steps[2] = sql.Migration(last.version, last.name, last.sql,
                                 "DROP TABLE oncely_starts;\nDROP TABLE no_such_table;")
        with pytest.raises(Exception, match="no_such_table"):
            sql.migrate(store.sql.write, store.sql, steps[:3], to=2)  # type: ignore[attr-defined]
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "broken.db")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    version = conn.execute("SELECT MAX(version) FROM oncely_schema_migrations").fetchone()[0]
    conn.close()
    assert "oncely_starts" in tables and version == 3
