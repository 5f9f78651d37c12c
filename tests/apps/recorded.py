"""An app whose events the test process records: ``--app tests.apps.recorded:make`` in an
in-process command line (click's runner) builds it, and tests read ``EVENTS``."""

from __future__ import annotations

import os

import oncely

EVENTS: list[tuple[str, dict[str, object]]] = []


def make() -> oncely.App:
    app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")

    @app.task(name="chore", singleton=True)
    def chore(ctx: oncely.JobContext, fail: bool = False) -> str:
        if fail:
            raise RuntimeError("chore failed")
        return "done"

    app.events.subscribe(lambda event: EVENTS.append((event.name, dict(event.fields))))
    return app
