"""A run that lost its lease (a zombie) cannot write: a newer run's state stands."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import oncely
from oncely.testing import run_job
from oncely_billing import metering_of, models, thresholds
from oncely_billing.notify import outbox_rows

from .conftest import NOW, Events, load_scenario, make_app, run_thresholds


def test_a_zombie_run_is_fenced_off(
    store_url: str, clock: oncely.FrozenClock, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(store_url, None, clock, events)
    load_scenario(app, events)
    task = metering_of(app).thresholds_task
    original_apply = thresholds.apply
    zombie: dict[str, Any] = {}

    def pause_then_apply(ctx: oncely.JobContext, rt: Any, candidates: Any, stats: Any) -> None:
        if not zombie:
            # The first run has evaluated (Alpha at 600) and now stalls past its lease; more
            # usage arrives and a second run takes the singleton lease with a newer fence.
            zombie["ctx"] = ctx
            events.add(11, NOW - timedelta(minutes=30), traces=500, spread=timedelta(minutes=5))
            clock.advance(61)
            zombie["newer"] = run_job(task, lease_ttl=60)
        original_apply(ctx, rt, candidates, stats)

    monkeypatch.setattr(thresholds, "apply", pause_then_apply)
    stale = run_job(task, lease_ttl=60)

    newer = zombie["newer"]
    assert newer.state == oncely.JobState.SUCCEEDED
    assert newer.job.fence > stale.job.fence
    assert stale.outcome.abandoned  # its writes raised FenceRejected: nothing recorded
    assert stale.job.state == oncely.JobState.RUNNING
    # the newer run's state stands: Alpha at 1100 notified once, for 1000 (not the zombie's 500)
    alpha = models.org_status(app, 1)
    assert (alpha.cycle_usage, alpha.threshold_state) == (1100, "WARNING")
    assert [(r["org_id"], r["threshold"]) for r in outbox_rows(app) if r["org_id"] == 1] == [
        (1, 1000)]

    with pytest.raises(oncely.FenceRejected), zombie["ctx"].fenced() as conn:
        conn.execute("UPDATE metering_organizations SET cycle_usage = 1 WHERE id = 1")
    with pytest.raises(oncely.FenceRejected):
        zombie["ctx"].checkpoint({"stage": "rollup_done"})
    assert models.org_status(app, 1).cycle_usage == 1100

    monkeypatch.setattr(thresholds, "apply", original_apply)
    assert run_thresholds(app)["org_rows_written"] == 0
    app.close()
