"""The app the recovery tests run in real worker processes.

``recovery.hold`` is a singleton job that records its start in the side-effect database
(``started``, with its pid and fence), works ``seconds`` (stopping early when asked, unless
``deaf``), then proves its fence is still current through ``ctx.fenced()`` and records ``done``;
a refused fence records ``rejected`` instead (and is re-raised, so the worker records nothing).
"""

from __future__ import annotations

import os
import time

import oncely
from tests.apps.basic import record_effect

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
