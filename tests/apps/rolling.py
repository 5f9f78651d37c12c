"""An app whose one schedule's definition comes from the environment, to replace workers of one
definition by workers of another (a rolling deploy) in real processes.

``ONCELY_TEST_EVERY`` sets the period of the schedule ``pulse`` in seconds (default 2). Every run
records its schedule and slot in the side-effect database of ``tests.apps.basic``, so a test
counts the slot runs that really happened; dynamic schedules of the task ``pulse`` record theirs
the same way.
"""

from __future__ import annotations

import os
import time

import oncely
from tests.apps.basic import record_effect

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")


@app.task(name="pulse")
def pulse(ctx: oncely.JobContext, n: int = 0) -> None:
    now = time.time()
    slot = ctx.slot.isoformat() if ctx.slot else "-"
    record_effect(ctx.schedule or "pulse", slot, ctx, now, now)


app.schedule("pulse", pulse, every=float(os.environ.get("ONCELY_TEST_EVERY", "2")))
