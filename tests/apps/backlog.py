"""Two schedules firing every second on the queue ``reports``, for a paused queue's backlog in
real worker processes: ``latest`` (catch_up ``latest``, overlap ``skip``) and ``buffered``
(catch_up ``all``, overlap ``buffer_one``). Every run records its schedule and slot (kind: the
schedule, key: the slot) in the side-effect database of :mod:`tests.apps.basic`.
"""

from __future__ import annotations

import os
import time

import oncely
from tests.apps.basic import record_effect

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")


def record_slot(ctx: oncely.JobContext) -> None:
    now = time.time()
    assert ctx.schedule is not None and ctx.slot is not None
    record_effect(ctx.schedule, ctx.slot.isoformat(), ctx, now, now)


@app.task(name="latest-report", queue="reports")
def latest_report(ctx: oncely.JobContext) -> None:
    record_slot(ctx)


@app.task(name="buffered-report", queue="reports")
def buffered_report(ctx: oncely.JobContext) -> None:
    record_slot(ctx)


app.schedule("latest", latest_report, every=1, catch_up="latest")
app.schedule("buffered", buffered_report, every=1, catch_up="all", overlap="buffer_one")
