"""Worker processes on PostgreSQL whose wall clocks are 60 s ahead and 60 s behind, beside a
healthy one running a 15-s singleton job: leases are judged on the server's clock, so neither
takes the job over nor makes its holder lose it; each worker's measured offset is recorded,
listed by ``oncely workers`` and warned about by ``oncely doctor`` while the workers live."""

from __future__ import annotations

import json

import pytest
from tests.conftest import oncely_cli, open_basic_app, read_effects
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
        healthy = workers.start(url, effects, "--concurrency", "2", env=env)
        job = app.store.job_insert(JobInsert(
            task="slow", args={"n": 1, "seconds": 15.0}, singleton_key="skew", max_attempts=3,
        ), app.clock.now()).job
        wait_until(lambda: app.store.job_get(job.id).state == JobState.RUNNING, timeout=30,
                   message="the healthy worker runs the job")
        ahead, behind = (workers.start(url, effects, "--concurrency", "2",
                                       env={**env, "ONCELY_CLOCK": f"skew:{skew}"})
                         for skew in ("+60", "-60"))
        wait_until(lambda: len(app.store.worker_list()) == 3, timeout=60,
                   message="the skewed workers registered")
        ids = {row.pid: row.worker_id for row in app.store.worker_list()}
        # what an operator sees while they run (the doctor with the fleet's lease TTL)
        listed = json.loads(oncely_cli(url, "--json", "workers").stdout)
        offsets_seen = {row["pid"]: row["clock_offset"] for row in listed}
        doctor = oncely_cli(url, "doctor", "--json", env={"ONCELY_LEASE_TTL": "6"})
        [clock] = [f for f in json.loads(doctor.stdout)["findings"] if f["check"] == "clock"]
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
    # ahead by 60 s: add -60 s to its clock to read the server's
    assert abs(offsets_seen[ahead.pid] + 60) < 2 and abs(offsets_seen[behind.pid] - 60) < 2
    assert abs(offsets_seen[healthy.pid]) < 2, offsets_seen
    assert doctor.returncode == 1 and clock["severity"] == "warning", clock
    assert "2 workers" in clock["summary"] and "0.6 s" in clock["summary"], clock
    evidence = "\n".join(clock["evidence"])
    assert ids[ahead.pid] in evidence and ids[behind.pid] in evidence, evidence
    assert ids[healthy.pid] not in evidence, evidence
