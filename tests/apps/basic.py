"""A small app the integration tests run in real worker processes.

Handlers record every execution in a side-effect database of their own (``ONCELY_TEST_EFFECTS``,
a SQLite file, or a PostgreSQL URL), outside the job store, so tests count what really ran instead
of trusting the queue's own bookkeeping.
"""

from __future__ import annotations

import os
import threading
import time

import oncely

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")
_local = threading.local()


def effects_connection():
    conn = getattr(_local, "conn", None)
    if conn is None:
        target = os.environ["ONCELY_TEST_EFFECTS"]
        if target.startswith("postgresql://"):
            import psycopg

            conn = psycopg.connect(target, autocommit=True)
        else:
            import sqlite3

            conn = sqlite3.connect(target, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
        _local.conn = conn
    return conn


def record_effect(
    kind: str, key: str, ctx: oncely.JobContext, started: float, ended: float
) -> None:
    conn = effects_connection()
    params = (kind, key, ctx.job_id, ctx.fence, os.getpid(), started, ended)
    mark = "%s" if os.environ["ONCELY_TEST_EFFECTS"].startswith("postgresql://") else "?"
    sql = (
        "INSERT INTO effects (kind, key, job_id, fence, pid, started, ended) "
        f"VALUES ({', '.join([mark] * 7)})"
    )
    for attempt in range(50):
        try:
            conn.execute(sql, params)
            return
        except Exception:
            if attempt == 49:
                raise
            time.sleep(0.05)


@app.task(name="noop")
def noop(ctx: oncely.JobContext) -> None:
    return None


@app.task(name="record")
def record(ctx: oncely.JobContext, n: int) -> int:
    now = time.time()
    record_effect("record", str(n), ctx, now, now)
    return n


@app.task(name="slow", retry=oncely.RetryPolicy(attempts=3, backoff="fixed", base_delay=0.1))
def slow(ctx: oncely.JobContext, n: int, seconds: float) -> int:
    started = time.time()
    record_effect("slow-began", str(n), ctx, started, started)  # a test can wait for the start
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(0.01)
    record_effect("slow", str(n), ctx, started, time.time())
    return n
