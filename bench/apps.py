"""The app the benchmark's worker processes run: ``python -m oncely --app bench.apps:app worker``.

The store comes from ``ONCELY_DATABASE_URL``. ``ONCELY_BENCH_LISTEN=off`` makes idle workers of a
PostgreSQL store sleep through their poll interval instead of waiting on LISTEN, which is how the
benchmark measures polling-only start latency while the store has no switch of its own for it.
The override lives here, in the benchmark, and touches nothing in ``src/``.
"""

from __future__ import annotations

import os
import time

import oncely

# The benchmark migrates every fresh store before it starts workers; workers only check nothing
# and start (auto-migration is not part of what is measured).
app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db", auto_migrate=False)


@app.task(name="noop")
def noop(ctx: oncely.JobContext) -> None:
    return None


def _poll_only(self: object, timeout: float) -> bool:
    time.sleep(max(0.0, timeout))
    return False


if os.environ.get("ONCELY_BENCH_LISTEN", "").lower() == "off":
    from oncely.store.postgres import PostgresStore

    PostgresStore.wait_for_work = _poll_only  # type: ignore[method-assign]
