"""Shared fixtures: real worker processes, side-effect databases, PostgreSQL schemas."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

import oncely

ROOT = Path(__file__).resolve().parent.parent
EFFECTS_TABLE = """CREATE TABLE IF NOT EXISTS effects (
    kind TEXT NOT NULL, key TEXT NOT NULL, job_id BIGINT, fence BIGINT, pid INTEGER,
    started DOUBLE PRECISION, ended DOUBLE PRECISION)"""


# Every app a test opens on PostgreSQL is closed when the test ends: an app left open keeps its
# pool's connections until the test process exits, and the suite's processes share the server's
# 100 clients with the worker fleets.
_opened: weakref.WeakSet[oncely.App] = weakref.WeakSet()
_app_init = oncely.App.__init__


def _tracked_init(self: oncely.App, *args: object, **kwargs: object) -> None:
    _app_init(self, *args, **kwargs)  # type: ignore[arg-type]
    _opened.add(self)


oncely.App.__init__ = _tracked_init  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _postgres_apps_closed() -> Iterator[None]:
    yield
    for app in list(_opened):
        if str(getattr(app, "url", "")).startswith("postgresql"):
            with contextlib.suppress(Exception):
                app.close()
    _opened.clear()


def postgres_url_or_skip() -> str:
    url = os.environ.get("ONCELY_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("ONCELY_TEST_POSTGRES_URL not set")
    return url


def with_query(url: str, **params: str) -> str:
    joiner = "&" if "?" in url else "?"
    return url + joiner + "&".join(f"{key}={value}" for key, value in params.items())


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """A fresh schema in the test PostgreSQL: yields (store URL with ?schema=, plain URL)."""
    import psycopg

    base = postgres_url_or_skip()
    schema = f"oncely_t_{uuid.uuid4().hex[:12]}"
    yield with_query(base, schema=schema), base
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def effects_sqlite(tmp_path: Path) -> str:
    path = tmp_path / "effects.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(EFFECTS_TABLE)
    conn.commit()
    conn.close()
    return str(path)


def read_effects(target: str, kind: str | None = None) -> list[tuple]:
    sql = "SELECT kind, key, job_id, fence, pid, started, ended FROM effects"
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target) as conn:
            rows = conn.execute(sql).fetchall()
    else:
        conn = sqlite3.connect(target)
        rows = conn.execute(sql).fetchall()
        conn.close()
    return [tuple(row) for row in rows if kind is None or row[0] == kind]


def open_basic_app(url: str) -> oncely.App:
    """An app on ``url`` that knows the tasks of ``tests.apps.basic``: the test process only
    enqueues and inspects, the worker processes run them."""
    from tests.apps import basic

    app = oncely.App(url)
    app.tasks = dict(basic.app.tasks)
    return app


def state_counts(app: oncely.App) -> collections.Counter[str]:
    """Jobs per state, over every queue."""
    counts: collections.Counter[str] = collections.Counter()
    for row in app.store.job_counts():
        counts[row.state] += row.count
    return counts


def oncely_cli(url: str, *args: str, app: str = "tests.apps.basic:app",
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``oncely --app APP ARGS`` on the store at ``url``, as an operator would."""
    full_env = {**os.environ, "ONCELY_DATABASE_URL": url, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "oncely", "--app", app, *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=120)


class Workers:
    """Worker subprocesses started by a test, all killed at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, url: str, effects: str, *args: str, app: str = "tests.apps.basic:app",
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        index = len(self.procs)
        full_env = dict(os.environ)
        full_env.update({"ONCELY_DATABASE_URL": url, "ONCELY_TEST_EFFECTS": effects,
                         "PYTHONPATH": str(ROOT)})
        full_env.update(env or {})
        log = open(self.tmp_path / f"worker-{index}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "oncely", "--app", app, "worker", *args],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def log(self, index: int) -> str:
        return (self.tmp_path / f"worker-{index}.log").read_text(errors="replace")

    def stop_all(self, sig: int = signal.SIGTERM, timeout: float = 60) -> list[int | None]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    yield pool
    for proc in pool.procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL on each store: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'oncely.db'}"
        return
    import psycopg

    base = postgres_url_or_skip()
    schema = f"oncely_t_{uuid.uuid4().hex[:12]}"
    yield with_query(base, schema=schema)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def pytest_configure(config: pytest.Config) -> None:
    """Compile the project's modules once, before the test processes start: the suite starts
    hundreds of ``oncely`` processes (workers, commands), and where ``PYTHONDONTWRITEBYTECODE``
    is set (as in CI containers) each of them would compile every module from source again."""
    if hasattr(config, "workerinput"):  # an xdist test process: the controller did it
        return
    import compileall

    for folder in ("src", "tests", "bench"):
        compileall.compile_dir(ROOT / folder, quiet=1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fleets of worker processes run one at a time per store: the PostgreSQL cases of the
    ``fleet`` group form a group of their own, so the two test processes each take one fleet
    at a time instead of one process taking every fleet."""
    for item in items:
        groups = {mark.args[0] for mark in item.iter_markers("xdist_group") if mark.args}
        if groups == {"fleet"} and item.get_closest_marker("postgres") is not None:
            item.add_marker(pytest.mark.xdist_group("pg"))
