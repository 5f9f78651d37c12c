"""The incident's "run it now on start", ported literally and with the lines in the wrong order:
``usage.enqueue()`` at import, *above* the module's ``app.schedule(...)``, in every worker
process, while the schedule fires every ``ONCELY_TEST_EVERY`` seconds (default 2) and each run
takes ``ONCELY_TEST_SECONDS`` (default 1) — so one-off runs and slot runs would coincide.

Every run records its start and end (kind ``usage``, key the slot or ``-``) in the side-effect
database of :mod:`tests.apps.basic`. The enqueue happens only when ``ONCELY_TEST_START=enqueue``
(not when the test process imports the module).
"""

from __future__ import annotations

import os
import time

import oncely
from tests.apps.basic import record_effect

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")
SECONDS = float(os.environ.get("ONCELY_TEST_SECONDS", "1"))


@app.task(name="usage")
def usage(ctx: oncely.JobContext) -> None:
    started = time.time()
    time.sleep(SECONDS)
    record_effect("usage", ctx.slot.isoformat() if ctx.slot else "-", ctx, started, time.time())


if os.environ.get("ONCELY_TEST_START") == "enqueue":
    usage.enqueue()  # above the declaration: this process does not know the task is scheduled

app.schedule("usage", usage, every=float(os.environ.get("ONCELY_TEST_EVERY", "2")),
             overlap="skip")
