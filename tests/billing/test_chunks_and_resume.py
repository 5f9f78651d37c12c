"""A failed chunk does not fail the others and is retried by the next run; a retried attempt
resumes from its checkpoint instead of querying the usage source again."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

import oncely
from oncely.testing import run_job, wait_until, worker_running
from oncely_billing import db, metering_of, thresholds
from oncely_billing.notify import outbox_rows

from .conftest import (
    EXPECTED_AFTER_FIRST_RUN,
    Events,
    load_scenario,
    make_app,
    run_thresholds,
    state_of,
)


def org_ids(params: dict[str, Any]) -> list[int]:
    if "rows" in params:
        return [row[0] for row in json.loads(params["rows"])]
    return list(params["id"])


def test_a_failed_chunk_is_recorded_and_retried_next_run(
    store_url: str, clock: oncely.FrozenClock, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(store_url, None, clock, events, chunk_size=2)
    load_scenario(app, events)
    original = db.run

    def failing_for_charlie(conn: Any, dialect: str, name: str, params: Any = None) -> Any:
        if name == "orgs_update_batch" and 3 in org_ids(params):
            raise RuntimeError("deadlock detected (injected)")
        return original(conn, dialect, name, params)

    monkeypatch.setattr(db, "run", failing_for_charlie)
    first = run_thresholds(app)
    # changed orgs 1,2 | 3,5 | 6 in chunks of two: the middle one failed, the others committed
    assert (first["chunks"], first["failed_chunks"], first["org_rows_written"]) == (3, 1, 3)
    state = state_of(app)
    assert state[1] == EXPECTED_AFTER_FIRST_RUN[1] and state[6] == EXPECTED_AFTER_FIRST_RUN[6]
    assert state[3] == (0, None) and state[5] == (0, None)  # nothing of the failed chunk
    assert {r["org_id"] for r in outbox_rows(app)} == {1, 2}  # its email was not promised
    assert [orgs for _, orgs in thresholds.open_chunk_failures(app)] == [[3, 5]]

    monkeypatch.setattr(db, "run", original)
    second = run_thresholds(app)
    assert second["org_rows_written"] == 2 and second["retried_orgs"] == 2
    assert state_of(app) == EXPECTED_AFTER_FIRST_RUN
    assert {r["org_id"] for r in outbox_rows(app)} == {1, 2, 3}
    assert thresholds.open_chunk_failures(app) == []
    app.close()


def test_a_retried_attempt_resumes_from_its_checkpoint(
    sqlite_url: str, clock: oncely.FrozenClock, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(sqlite_url, None, clock, events)
    load_scenario(app, events)
    runtime = metering_of(app)
    original = thresholds.evaluate
    calls = []

    def crash_once(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("worker lost its database connection (injected)")
        return original(*args)

    monkeypatch.setattr(thresholds, "evaluate", crash_once)
    failed = run_job(runtime.thresholds_task)
    assert failed.state == oncely.JobState.RETRYABLE
    assert failed.job.checkpoint["stage"] == "rollup_done"
    queries = runtime.source.queries

    clock.advance(timedelta(minutes=2))  # past the retry delay
    with worker_running(app, queues=[failed.job.queue], maintenance=False):
        wait_until(lambda: app.store.job_get(failed.job.id).state == oncely.JobState.SUCCEEDED,
                   timeout=20, message="the retry succeeded")
    retried = app.store.job_get(failed.job.id)
    assert retried is not None and retried.attempt == 2
    assert retried.result["resumed"] is True
    assert runtime.source.queries == queries  # the rollup was not recounted
    assert state_of(app) == EXPECTED_AFTER_FIRST_RUN
    app.close()
