"""Read-only commands never create or migrate a schema.

Each of them, pointed at a missing SQLite file, an empty file, a foreign SQLite database, an
older oncely schema, or a PostgreSQL schema without oncely's tables, exits 4 with one line that
says what to do, and leaves the file system and the PostgreSQL catalog as they were.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from pathlib import Path

import pytest

from oncely.cli import main
from oncely.store import open_store
from oncely.store.migrations import latest_version

POSTGRES_ENV = "ONCELY_TEST_POSTGRES_URL"

READ_ONLY = [
    ["doctor"],
    ["jobs", "list"],
    ["jobs", "show", "1"],
    ["queues"],
    ["queues", "list"],
    ["schedules"],
    ["ledger", "nightly"],
    ["leases"],
    ["workers"],
    ["anomalies"],
    ["dashboard", "--port", "1"],
]


def run(url: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = 0
    try:
        main(["--database-url", url, *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


def refused(url: str, capsys: pytest.CaptureFixture[str], fragment: str,
            commands: list[list[str]] = READ_ONLY) -> None:
    for args in commands:
        code, lines = run(url, args, capsys)
        assert code == 4, (args, code, lines)
        assert len(lines) == 1 and fragment in lines[0], (args, lines)


def snapshot(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir())}


def test_a_missing_sqlite_file_stays_missing(tmp_path: Path, capsys) -> None:
    refused(f"sqlite:///{tmp_path / 'typo.db'}", capsys, "does not exist",
            [*READ_ONLY, ["migrate", "--status"]])
    assert list(tmp_path.iterdir()) == []


def test_an_empty_file_stays_empty(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    refused(f"sqlite:///{tmp_path / 'empty.db'}", capsys, "holds no oncely schema")
    assert snapshot(tmp_path) == {"empty.db": hashlib.sha256(b"").hexdigest()}


def test_a_foreign_sqlite_database_is_left_alone(tmp_path: Path, capsys) -> None:
    conn = sqlite3.connect(tmp_path / "shop.db")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = snapshot(tmp_path)
    refused(f"sqlite:///{tmp_path / 'shop.db'}", capsys, "holds no oncely schema")
    assert run(f"sqlite:///{tmp_path / 'shop.db'}", ["migrate", "--status"], capsys)[0] == 0
    assert snapshot(tmp_path) == before  # no WAL switch, no -wal/-shm files, no tables


def test_an_older_sqlite_schema_is_not_migrated(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = open_store(url)
    store.migrate(to=2)
    store.close()
    refused(url, capsys, "run `oncely migrate`")
    assert run(url, ["migrate", "--status"], capsys)[0] == 0  # lists 3.. as pending
    store = open_store(url)
    try:
        assert store.schema_version() == 2
    finally:
        store.close()


def test_operator_commands_do_not_create_a_schema_either(tmp_path: Path, capsys) -> None:
    refused(f"sqlite:///{tmp_path / 'typo.db'}", capsys, "does not exist",
            [["jobs", "cancel", "1"], ["jobs", "retry", "1"], ["queues", "pause", "q"],
             ["anomalies", "check"]])
    assert list(tmp_path.iterdir()) == []


def test_worker_no_migrate_refuses_and_migrate_creates(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    code, lines = run(url, ["--app", "tests.apps.basic:app", "worker", "--no-migrate"], capsys)
    assert code == 4 and len(lines) == 1 and "does not exist" in lines[0]
    assert list(tmp_path.iterdir()) == []
    code, _ = run(url, ["migrate"], capsys)
    assert code == 0


@pytest.fixture
def postgres_url():
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} not set")
    import psycopg

    schemas: list[str] = []
    yield url, schemas
    with psycopg.connect(url, autocommit=True) as admin:
        for schema in schemas:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _catalog(url: str, schema: str) -> tuple[bool, list[str]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)",
                              (schema,)).fetchone()[0]
        tables = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,))]
    return bool(exists), tables


@pytest.mark.postgres
def test_postgres_without_oncely_schema_creates_nothing(postgres_url, capsys) -> None:
    import psycopg

    url, schemas = postgres_url
    missing, empty = f"oncely_ro_{uuid.uuid4().hex[:12]}", f"oncely_ro_{uuid.uuid4().hex[:12]}"
    schemas += [missing, empty]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{empty}"')
    refused(f"{url}?schema={missing}", capsys, "holds no oncely schema")
    refused(f"{url}?schema={empty}", capsys, "holds no oncely schema")
    assert _catalog(url, missing) == (False, [])
    assert _catalog(url, empty) == (True, [])


@pytest.mark.postgres
def test_an_older_postgres_schema_is_not_migrated(postgres_url, capsys) -> None:
    url, schemas = postgres_url
    schema = f"oncely_ro_{uuid.uuid4().hex[:12]}"
    schemas.append(schema)
    store = open_store(f"{url}?schema={schema}")
    store.migrate(to=latest_version("postgresql") - 1)
    store.close()
    refused(f"{url}?schema={schema}", capsys, "run `oncely migrate`")
    store = open_store(f"{url}?schema={schema}")
    try:
        assert store.schema_version() == latest_version("postgresql") - 1
    finally:
        store.close()
