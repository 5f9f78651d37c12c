"""The app the queue-control integration tests run in real worker processes.

Its queues declare fleet-wide limits, which every worker upserts when it starts. Handlers record
when they ran in the side-effect database (``ONCELY_TEST_EFFECTS``), so tests measure overlap
from what really ran rather than from the queue's own bookkeeping.
"""

from __future__ import annotations

import os
import time

import oncely
from tests.apps.basic import record_effect

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")
app.queue("capped", max_running=2)
app.queue("rated", limit=(20, 1))
app.queue("bulk", retention=oncely.Retention(succeeded=oncely.Keep(count=1000)))


def _run(kind: str, ctx: oncely.JobContext, n: int, seconds: float) -> int:
    started = time.time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(0.005)
    record_effect(kind, str(n), ctx, started, time.time())
    return n


@app.task(name="hold", queue="capped")
def hold(ctx: oncely.JobContext, n: int, seconds: float) -> int:
    return _run("hold", ctx, n, seconds)


@app.task(name="tick", queue="rated")
def tick(ctx: oncely.JobContext, n: int) -> int:
    return n


@app.task(name="steady", queue="steady")
def steady(ctx: oncely.JobContext, n: int, seconds: float = 0.0) -> int:
    return _run("steady", ctx, n, seconds)
