"""The app the chaos test runs in six real worker processes.

One schedule, ``chaos``, fires every second (overlap ``skip``; a misfire grace of a few seconds,
so a slot enqueued late on a loaded machine still runs as an on-time slot). Its handler works for
0.3-0.6 s, then writes one row to ``chaos_records`` **in the job store, through**
``ctx.fenced(checkpoint="recorded")``: the row commits only while the attempt's fence is current,
together with the checkpoint that tells a re-run (its worker killed after the write) that the
slot's record is in. A rejected write is recorded outside the fence, in the side-effect database
(``ONCELY_TEST_EFFECTS``, table ``effects``, kind ``rejected``), and the rejection is re-raised so
the worker abandons the attempt.

The test creates ``chaos_records`` (see :func:`create_records_table`); the SQL differs per dialect.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import oncely
from tests.apps.basic import record_effect

SCHEDULE = "chaos"
RECORDS = "chaos_records"
WORK_SECONDS = (0.3, 0.6)

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")

_COLUMNS = "slot, job_id, fence, attempt, pid, started, ended"
_TYPES = {
    "sqlite": "slot REAL NOT NULL, job_id INTEGER NOT NULL, fence INTEGER NOT NULL, "
              "attempt INTEGER NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL, "
              "ended REAL NOT NULL",
    "postgresql": "slot DOUBLE PRECISION NOT NULL, job_id BIGINT NOT NULL, fence BIGINT NOT NULL, "
                  "attempt INTEGER NOT NULL, pid INTEGER NOT NULL, "
                  "started DOUBLE PRECISION NOT NULL, ended DOUBLE PRECISION NOT NULL",
}


def placeholders(dialect: str, count: int) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    return ", ".join([mark] * count)


def create_records_table(store: Any, table: str = RECORDS) -> None:
    """Create the handler's record table in the job store (same schema as the jobs)."""
    with store.transaction() as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({_TYPES[store.dialect]})")


def read_records(store: Any, table: str = RECORDS) -> list[dict[str, Any]]:
    with store.transaction() as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM {table} ORDER BY started").fetchall()
    names = _COLUMNS.split(", ")
    return [dict(zip(names, tuple(row), strict=True)) for row in rows]


def insert_record(conn: Any, ctx: oncely.JobContext, table: str, slot: float,
                  started: float) -> None:
    """Insert this attempt's record on ``conn`` (a connection from ``ctx.fenced()``)."""
    sql = f"INSERT INTO {table} ({_COLUMNS}) VALUES ({placeholders(ctx.app.store.dialect, 7)})"
    conn.execute(sql, (slot, ctx.job_id, ctx.fence, ctx.attempt, os.getpid(), started, time.time()))


def write_record(ctx: oncely.JobContext, table: str, slot: float, started: float) -> None:
    """Insert this attempt's record under its fence, with the checkpoint ``"recorded"`` in the
    same transaction; FenceRejected if the fence moved on."""
    with ctx.fenced(checkpoint="recorded") as conn:
        insert_record(conn, ctx, table, slot, started)


@app.task(name="chaos.tick")
def tick(ctx: oncely.JobContext) -> float:
    started = time.time()
    assert ctx.slot is not None
    slot = ctx.slot.timestamp()
    if ctx.last_checkpoint == "recorded":
        return slot  # re-run after its worker died past the write: the record is in
    # Plain sleep, deliberately deaf to cancellation: a paused worker must *try* to write when
    # it wakes up, so the fence (not the handler's good manners) is what stops it.
    time.sleep(random.uniform(*WORK_SECONDS))
    try:
        write_record(ctx, RECORDS, slot, started)
    except oncely.FenceRejected:
        record_effect("rejected", ctx.slot.isoformat(), ctx, started, time.time())
        raise
    return slot


app.schedule(SCHEDULE, tick, every=1, overlap="skip", misfire_grace=5)
