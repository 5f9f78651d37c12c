"""The `oncely` command as a user runs it: real processes, real exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.conftest import ROOT


def oncely(*args: str, cwd=None, env=None, timeout: float = 60):
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    full_env.pop("ONCELY_APP", None)
    return subprocess.run([sys.executable, "-m", "oncely", *args], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def one_line_error(result, code: int, fragment: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture
def fresh_db(tmp_path):
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def db(fresh_db):
    """A database `oncely migrate` created: only migrate and worker create a schema."""
    import oncely

    app = oncely.App(fresh_db)
    app.migrate()
    app.close()
    return fresh_db


APP = "tests.apps.basic:app"


def test_migrate_then_enqueue_list_show_cancel_retry(fresh_db):
    db = fresh_db
    first = oncely("--database-url", db, "migrate")
    assert first.returncode == 0 and "migrated sqlite schema from version 0" in first.stdout
    again = oncely("--database-url", db, "migrate")
    assert "schema is current" in again.stdout
    made = oncely("--app", APP, "--database-url", db, "--json", "enqueue", "record",
                  "--args", '{"n": 7}', "--delay", "3600")
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)
    assert job["state"] == "scheduled" and job["created"] is True
    listed = json.loads(oncely("--database-url", db, "--json", "jobs", "list").stdout)
    assert [row["id"] for row in listed] == [job["id"]]
    table = oncely("--database-url", db, "jobs", "list", "--state", "scheduled")
    assert "record" in table.stdout
    shown = oncely("--database-url", db, "--json", "jobs", "show", str(job["id"]))
    shown = json.loads(shown.stdout)
    assert shown["args"] == {"n": 7} and shown["errors"] == []
    cancelled = oncely("--database-url", db, "jobs", "cancel", str(job["id"]))
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    retried = oncely("--database-url", db, "jobs", "retry", str(job["id"]))
    assert retried.returncode == 0 and "available" in retried.stdout
    queues = json.loads(oncely("--database-url", db, "--json", "queues").stdout)
    assert queues == [{"queue": "default", **{s: 0 for s in (
        "scheduled", "running", "succeeded", "retryable", "failed", "cancelled")},
        "available": 1}]


def test_unique_key_enqueue_says_it_was_already_there(db):
    args = ["--app", APP, "--database-url", db, "enqueue", "record", "--args", '{"n": 1}',
            "--unique-key", "only-one"]
    assert "enqueued job" in oncely(*args).stdout
    assert "already enqueued" in oncely(*args).stdout


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--app", "no_such_module:app", "enqueue", "x"], 2, "cannot import 'no_such_module'"),
        (["--app", "tests.apps.basic", "enqueue", "x"], 2, "must look like 'package.module:app'"),
        (["--app", "tests.apps.basic:nothing", "enqueue", "x"], 2, "is not an oncely.App"),
        (["--app", APP, "enqueue", "no.such.task"], 2, "unknown task 'no.such.task'"),
        (["--app", APP, "enqueue", "record", "--args", "{n: 1}"], 2, "--args is not valid JSON"),
        (["--app", APP, "enqueue", "record", "--args", "[1]"], 2, "must be a JSON object"),
        (["enqueue", "record"], 2, "needs your app"),
        (["jobs", "show", "999"], 5, "job 999 does not exist"),
        (["jobs", "retry", "999"], 5, "job 999"),
        (["ledger", "nope"], 5, "schedule 'nope' does not exist"),
    ],
)
def test_user_mistakes_get_one_line_and_a_documented_code(db, args, code, fragment):
    one_line_error(oncely("--database-url", db, *args), code, fragment)


def test_bad_urls_and_bad_files(tmp_path):
    one_line_error(oncely("--database-url", "mysql://x/y", "jobs", "list"), 2,
                   "unsupported database URL scheme 'mysql'")
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    one_line_error(oncely("--database-url", f"sqlite:///{not_a_db}", "jobs", "list"), 3,
                   str(not_a_db))
    missing_dir = tmp_path / "no" / "such" / "dir" / "x.db"
    one_line_error(oncely("--database-url", f"sqlite:///{missing_dir}", "jobs", "list"), 3,
                   "no")


def test_unreachable_postgres_is_one_line_exit_3():
    result = oncely("--database-url", "postgresql://postgres@127.0.0.1:1/test", "jobs", "list")
    one_line_error(result, 3, "127.0.0.1")


def test_help_documents_exit_codes_and_env_vars():
    result = oncely("--help")
    assert result.returncode == 0
    assert "Exit codes" in result.stdout and "ONCELY_DATABASE_URL" in result.stdout
    worker_help = oncely("worker", "--help").stdout
    assert "ONCELY_CONCURRENCY" in worker_help


def test_a_schema_newer_than_this_oncely_is_refused(db, tmp_path):
    import sqlite3

    assert oncely("--database-url", db, "migrate").returncode == 0
    conn = sqlite3.connect(tmp_path / "cli.db")
    conn.execute("INSERT INTO oncely_schema_migrations (version, name, applied_at) "
                 "VALUES (99, 'from_the_future', 0)")
    conn.commit()
    conn.close()
    one_line_error(oncely("--database-url", db, "jobs", "list"), 4, "newer than this oncely")
    one_line_error(oncely("--database-url", db, "migrate"), 4, "newer than this oncely")
