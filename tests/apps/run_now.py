"""``python -m tests.apps.run_now URL RELEASE_FILE``: one process's ``app.run_now`` of a singleton
task that runs until RELEASE_FILE exists; prints ``ran <state>`` or ``busy <reason>``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import oncely


def build(url: str, release: Path) -> oncely.App:
    app = oncely.App(url, settings=oncely.Settings(lease_ttl=2.0))

    @app.task(name="exclusive", singleton=True)
    def exclusive(ctx: oncely.JobContext) -> int:
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            ctx.raise_if_cancelled()
            time.sleep(0.02)
        return ctx.fence

    return app


if __name__ == "__main__":
    app = build(sys.argv[1], Path(sys.argv[2]))
    try:
        job = app.run_now("exclusive", by=f"process {sys.argv[3]}")
        print("ran", job.state.value, flush=True)
    except oncely.SingletonBusy as exc:
        print("busy", exc, flush=True)
    finally:
        app.close()
