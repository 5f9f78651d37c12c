"""The app ``bench/schedules.py`` runs in its worker processes.

``ONCELY_BENCH_MODE`` picks what the workers do (the store comes from ``ONCELY_DATABASE_URL``):

* ``delay`` — schedule ``bench-delay`` fires every second; its handler records when it started;
* ``next_slot`` — schedule ``bench-hold`` fires every second; its handler records its start and
  then holds the singleton lease until it is stopped, so each slot waits for the holder (skip);
* ``rescue`` — no schedule; the benchmark enqueues one ``bench.hold`` job (a singleton that holds
  its lease until stopped, retried without delay when its worker dies).

Every handler writes ``(job_id, slot, fence, attempt, pid, started)`` to ``bench_starts`` in the
job store through ``ctx.fenced()`` as its first act, so a start is recorded only under a current
fence. The benchmark creates the table before any worker starts.
"""

from __future__ import annotations

import os
import time

import oncely

TABLE = "bench_starts"
COLUMNS = "job_id, slot, fence, attempt, pid, started"
TYPES = {
    "sqlite": "job_id INTEGER, slot REAL, fence INTEGER, attempt INTEGER, pid INTEGER, "
              "started REAL",
    "postgresql": "job_id BIGINT, slot DOUBLE PRECISION, fence BIGINT, attempt INTEGER, "
                  "pid INTEGER, started DOUBLE PRECISION",
}
HOLD_LIMIT = 600.0  # seconds a holder keeps its lease at most

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db",
                 auto_migrate=False)


def record_start(ctx: oncely.JobContext) -> None:
    started = time.time()
    mark = "?" if ctx.app.store.dialect == "sqlite" else "%s"
    slot = None if ctx.slot is None else ctx.slot.timestamp()
    with ctx.fenced() as conn:
        conn.execute(
            f"INSERT INTO {TABLE} ({COLUMNS}) VALUES ({', '.join([mark] * 6)})",
            (ctx.job_id, slot, ctx.fence, ctx.attempt, os.getpid(), started),
        )


@app.task(name="bench.tick")
def tick(ctx: oncely.JobContext) -> None:
    record_start(ctx)


@app.task(name="bench.hold", singleton=True,
          retry=oncely.RetryPolicy(attempts=100, backoff="fixed", base_delay=0.0))
def hold(ctx: oncely.JobContext) -> None:
    record_start(ctx)
    deadline = time.monotonic() + HOLD_LIMIT
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)


_MODE = os.environ.get("ONCELY_BENCH_MODE", "")
if _MODE == "delay":
    app.schedule("bench-delay", tick, every=1, misfire_grace=5)
elif _MODE == "next_slot":
    app.schedule("bench-hold", hold, every=1, misfire_grace=5)
