"""The app the benchmark's worker processes run: ``python -m oncely --app bench.apps:app worker``.

The store comes from ``ONCELY_DATABASE_URL`` (for polling-only start latency the benchmark adds
``listen=off`` to a PostgreSQL URL).
"""

from __future__ import annotations

import os

import oncely

# The benchmark migrates every fresh store before it starts workers; workers only check nothing
# and start (auto-migration is not part of what is measured).
app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db", auto_migrate=False)


@app.task(name="noop")
def noop(ctx: oncely.JobContext) -> None:
    return None


@app.task(name="noop_process", isolation="process")
def noop_process(ctx: oncely.JobContext) -> None:
    return None


# The limits part of throughput.py: no-ops whose concurrency key (one of KEYS values, from the
# job's args) allows far more running jobs than a fleet holds, so it costs what enforcing it
# costs without holding a job back. Only the runs that measure it declare the task (a worker
# declares its tasks' limits as it starts, and any task limit sends every claim through the
# limited path).
PER_KEY_TASK = "noop_per_key"
PER_KEY = {"concurrency_key": "k:{key}", "max_per_key": 1_000_000}
KEYS = 64


def noop_per_key(ctx: oncely.JobContext, key: int = 0) -> None:
    return None


def register_per_key(target: oncely.App) -> None:
    target.task(name=PER_KEY_TASK, **PER_KEY)(noop_per_key)  # type: ignore[arg-type]


if os.environ.get("ONCELY_BENCH_PER_KEY") == "1":
    register_per_key(app)

