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
