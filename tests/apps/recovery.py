"""The app the recovery tests run in real worker processes.

``recovery.hold`` is a singleton job that records its start in the side-effect database
(``started``, with its pid and fence), works ``seconds`` (stopping early when asked, unless
``deaf``), then proves its fence is still current through ``ctx.fenced()`` and records ``done``;
a refused fence records ``rejected`` instead (and is re-raised, so the worker records nothing).

``recovery.write_then_hold`` writes one row to ``recovery_records`` in the job store through
``ctx.fenced(checkpoint="written")``, records ``written``, then works ``seconds``. An attempt that
finds the checkpoint (a re-run after its worker died past the write) records ``resumed`` and
returns without writing again.
"""

from __future__ import annotations

import os
import time

import oncely
from tests.apps.basic import record_effect
from tests.apps.chaos import insert_record

RECORDS = "recovery_records"

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")


@app.task(name="recovery.hold", singleton=True)
def hold(ctx: oncely.JobContext, seconds: float = 60.0, deaf: bool = False) -> None:
    started = time.time()
    record_effect("started", "hold", ctx, started, started)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not deaf:
            ctx.raise_if_cancelled()
        time.sleep(0.01)
    try:
        with ctx.fenced():
            pass
    except oncely.FenceRejected:
        record_effect("rejected", "hold", ctx, started, time.time())
        raise
    record_effect("done", "hold", ctx, started, time.time())


@app.task(name="recovery.write_then_hold", singleton=True)
def write_then_hold(ctx: oncely.JobContext, seconds: float = 60.0) -> str:
    started = time.time()
    record_effect("started", "write", ctx, started, started)
    if ctx.last_checkpoint == "written":
        record_effect("resumed", "write", ctx, started, time.time())
        return "written by an earlier attempt"
    with ctx.fenced(checkpoint="written") as conn:
        insert_record(conn, ctx, RECORDS, 0.0, started)
    record_effect("written", "write", ctx, started, time.time())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(0.01)
    return "written"
