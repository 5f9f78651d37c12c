"""The app ``bench/recovery.py`` runs in its worker processes.

Schedule ``bench-recovery`` fires every ``ONCELY_BENCH_PERIOD`` seconds (5) with the default
overlap policy (skip); its handler works ``ONCELY_BENCH_WORK`` seconds (3). Every run writes to
``bench_runs`` in the job store: a ``start`` row through ``ctx.fenced()`` as its first act, and an
``end`` row through ``ctx.fenced()`` as its last. A run that finds its fence moved on when it
writes its ``end`` row (a zombie: its worker was paused past its lease) records a ``refused`` row
outside the fence instead. The handler ignores stop requests on purpose, so a zombie really
tries to write. The benchmark creates the table before any worker starts.
"""

from __future__ import annotations

import os
import time

import oncely

TABLE = "bench_runs"
SCHEDULE = "bench-recovery"
COLUMNS = "kind, job_id, slot, fence, attempt, pid, at"
TYPES = {
    "sqlite": "kind TEXT, job_id INTEGER, slot REAL, fence INTEGER, attempt INTEGER, "
              "pid INTEGER, at REAL",
    "postgresql": "kind TEXT, job_id BIGINT, slot DOUBLE PRECISION, fence BIGINT, "
                  "attempt INTEGER, pid INTEGER, at DOUBLE PRECISION",
}
PERIOD = float(os.environ.get("ONCELY_BENCH_PERIOD", "5"))
WORK = float(os.environ.get("ONCELY_BENCH_WORK", "3"))

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db",
                 auto_migrate=False)


def _insert(conn: object, ctx: oncely.JobContext, kind: str) -> None:
    mark = "?" if ctx.app.store.dialect == "sqlite" else "%s"
    slot = None if ctx.slot is None else ctx.slot.timestamp()
    conn.execute(  # type: ignore[attr-defined]
        f"INSERT INTO {TABLE} ({COLUMNS}) VALUES ({', '.join([mark] * 7)})",
        (kind, ctx.job_id, slot, ctx.fence, ctx.attempt, os.getpid(), time.time()),
    )


@app.task(name="bench.recovery")
def run(ctx: oncely.JobContext) -> None:
    with ctx.fenced() as conn:
        _insert(conn, ctx, "start")
    time.sleep(WORK)  # deaf to stop requests: a zombie must try its last write
    try:
        with ctx.fenced() as conn:
            _insert(conn, ctx, "end")
    except oncely.FenceRejected:
        with ctx.app.store.transaction() as conn:
            _insert(conn, ctx, "refused")
        raise


app.schedule(SCHEDULE, run, every=PERIOD)
