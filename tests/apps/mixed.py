"""A mixed-version fleet in real worker processes: the task ``exotic`` (queue ``rare``) exists
only in workers started with ``ONCELY_TEST_EXOTIC=1`` (a newer release, or a task installed
only where a key is set); ``common`` exists in every worker. Each run records itself (kind: the
task, key: ``n``) in the side-effect database of :mod:`tests.apps.basic`.
"""

from __future__ import annotations

import os
import time

import oncely
from tests.apps.basic import record_effect

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")


@app.task(name="common")
def common(ctx: oncely.JobContext, n: int = 0) -> None:
    now = time.time()
    record_effect("common", str(n), ctx, now, now)


if os.environ.get("ONCELY_TEST_EXOTIC") == "1":

    @app.task(name="exotic", queue="rare")
    def exotic(ctx: oncely.JobContext, n: int = 0) -> None:
        now = time.time()
        record_effect("exotic", str(n), ctx, now, now)
