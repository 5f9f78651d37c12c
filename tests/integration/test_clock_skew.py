"""Worker processes on PostgreSQL whose wall clocks are 60 s ahead and 60 s behind, beside a
healthy one running a 15-s singleton job: leases are judged on the server's clock, so neither
takes the job over nor makes its holder lose it, and each worker's measured offset is recorded."""

from __future__ import annotations

import pytest
from tests.conftest import open_basic_app, read_effects
from tests.integration.test_postgres_fleet import effects_schema

from oncely.store.params import JobInsert
from oncely.testing import wait_until
from oncely.types import JobState

pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("fleet")]


def test_skewed_workers_neither_take_over_nor_lose_a_live_lease(pg_schema, workers) -> None:
    url, base = pg_schema
    app = open_basic_app(url)
    app.migrate()
    env = {"ONCELY_LEASE_TTL": "6", "ONCELY_MAINTENANCE_INTERVAL": "0.5"}
    with effects_schema(base) as effects:
        workers.start(url, effects, "--concurrency", "2", env=env)
        job = app.store.job_insert(JobInsert(
            task="slow", args={"n": 1, "seconds": 15.0}, singleton_key="skew", max_attempts=3,
        ), app.clock.now()).job
        wait_until(lambda: app.store.job_get(job.id).state == JobState.RUNNING, timeout=30,
                   message="the healthy worker runs the job")
        for skew in ("+60", "-60"):
            workers.start(url, effects, "--concurrency", "2",
                          env={**env, "ONCELY_CLOCK": f"skew:{skew}"})
        wait_until(lambda: len(app.store.worker_list()) == 3, timeout=60,
                   message="the skewed workers registered")
        running = app.store.job_get(job.id)
        assert running.state == JobState.RUNNING and running.attempt == 1, (
            "the job ended before the skewed workers joined: the machine is too slow for "
            f"this test ({running})")
        wait_until(lambda: app.store.job_get(job.id).state.finished, timeout=90,
                   message="the job finished")
        offsets = sorted(round(row.clock_offset or 0.0) for row in app.store.worker_list())
        assert workers.stop_all() == [0, 0, 0]
        done = read_effects(effects, "slow")
    final = app.store.job_get(job.id)
    assert final.state == JobState.SUCCEEDED and final.attempt == 1, final
    assert len(done) == 1, f"the job ran {len(done)} times"
    assert offsets == [-60, 0, 60]
