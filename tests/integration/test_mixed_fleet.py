"""A mixed-version fleet in real worker processes, on both stores: workers claim only the tasks
their app registers. A job of a task no live worker has waits — the job view says why and
``oncely doctor`` names its task and queue — until a worker that has the task starts and runs it
once; no attempt ever fails for an unknown task."""

from __future__ import annotations

import json
import subprocess

import pytest
from tests.conftest import oncely_cli, read_effects

import oncely
from oncely.testing import wait_until
from oncely.types import JobState

pytestmark = pytest.mark.xdist_group("fleet")

APP = "tests.apps.mixed:app"
FAST = {"ONCELY_POLL_INTERVAL": "0.1"}


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return oncely_cli(url, *args, app=APP, env={"ONCELY_TEST_EXOTIC": ""})


def test_a_job_of_a_task_no_worker_has_waits_named_until_a_worker_has_it(
    any_url, effects_sqlite, workers
):
    producer = oncely.App(any_url)  # an enqueuing service that knows the new task
    producer.task(name="exotic", queue="rare")(lambda ctx, n=0: None)
    producer.task(name="common")(lambda ctx, n=0: None)
    producer.migrate()
    exotic = producer.enqueue("exotic", n=1)
    workers.start(any_url, effects_sqlite, app=APP, env=FAST)  # an older worker: no "exotic"
    common = producer.enqueue("common", n=1)
    wait_until(lambda: common.refresh().state == JobState.SUCCEEDED, timeout=60, interval=0.1,
               message="the older worker runs the task it has")
    assert exotic.refresh().state == JobState.AVAILABLE and exotic.job.attempt == 0

    shown = cli(any_url, "--json", "jobs", "show", str(exotic.id))
    assert shown.returncode == 0, shown.stderr
    reason = json.loads(shown.stdout)["waiting_reason"]
    assert reason == "no live worker has task 'exotic' for queue 'rare'"
    doctor = cli(any_url, "doctor", "--json")
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    [finding] = [f for f in json.loads(doctor.stdout)["findings"] if f["check"] == "tasks"]
    assert finding["severity"] == "problem"
    assert "'exotic'" in finding["summary"] and "'rare'" in finding["summary"], finding

    workers.start(any_url, effects_sqlite, app=APP, env={**FAST, "ONCELY_TEST_EXOTIC": "1"})
    wait_until(lambda: exotic.refresh().state == JobState.SUCCEEDED, timeout=60, interval=0.1,
               message="the newer worker runs the job")
    assert workers.stop_all() == [0, 0]
    assert [key for _, key, *_ in read_effects(effects_sqlite, "exotic")] == ["1"]
    final = exotic.refresh()
    assert final.attempt == 1 and not final.errors
    logs = workers.log(0) + workers.log(1)
    assert "unknown task" not in logs and "not registered" not in logs, logs
