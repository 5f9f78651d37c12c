"""`oncely queues list|pause|resume` and `jobs retry --all`, as a user runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from test_cli import oncely, one_line_error

from oncely.store import open_store
from oncely.store.params import JobClaimParams, JobFinish, JobInsert
from oncely.types import ErrorKind, JobError, JobState

APP = "tests.apps.limits:app"


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert oncely("--database-url", url, "migrate").returncode == 0  # commands below create none
    return url


def test_pause_shows_everywhere_a_user_looks_and_resume_clears_it(db):
    made = oncely("--app", APP, "--database-url", db, "--json", "enqueue", "steady",
                  "--args", '{"n": 1}')
    job_id = json.loads(made.stdout)["id"]
    paused = oncely("--database-url", db, "queues", "pause", "steady")
    assert paused.returncode == 0 and "queue steady paused" in paused.stdout
    [row] = json.loads(oncely("--database-url", db, "--json", "queues", "list").stdout)
    assert (row["queue"], row["paused"], row["held"], row["held_jobs"], row["due"]) == (
        "steady", True, "paused", 1, 1)
    shown = json.loads(oncely("--database-url", db, "--json", "jobs", "show", str(job_id)).stdout)
    assert shown["waiting_reason"] == "queue steady is paused"
    table = oncely("--database-url", db, "queues", "list")
    assert "paused" in table.stdout
    assert oncely("--database-url", db, "queues", "resume", "steady").returncode == 0
    [row] = json.loads(oncely("--database-url", db, "--json", "queues", "list").stdout)
    assert row["paused"] is False and row["held"] is None


def test_retry_all_brings_back_the_dead_letters_of_a_queue_and_task(db):
    store = open_store(db)
    store.migrate()
    now = datetime.now(UTC)
    for queue, task in (("q", "t"), ("q", "t"), ("q", "u"), ("p", "t")):
        store.job_insert(JobInsert(task=task, queue=queue), now)
        [job] = store.job_claim(JobClaimParams("w", now, 1, 30.0, (queue,))).jobs
        error = JobError(job.attempt, now, ErrorKind.ERROR, "boom")
        assert store.job_finish(JobFinish(job.id, job.fence, now, JobState.FAILED, error=error))
    store.close()
    retried = oncely("--database-url", db, "jobs", "retry", "--all", "--queue", "q", "--task", "t")
    assert retried.returncode == 0, retried.stderr
    assert "retried 2 failed job(s) of queue q and task t" in retried.stdout
    rest = json.loads(oncely("--database-url", db, "--json", "jobs", "retry", "--all").stdout)
    assert rest == {"retried": 2, "unique_key_conflicts": []}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["jobs", "retry"], "give a job id, or --all"),
        (["jobs", "retry", "3", "--all"], "give a job id, or --all"),
        (["jobs", "retry", "3", "--queue", "q"], "use them with --all"),
        (["queues", "pause", "no such queue"], "queue name 'no such queue' is invalid"),
    ],
)
def test_queue_command_mistakes_are_one_line(db, args, fragment):
    one_line_error(oncely("--database-url", db, *args), 2, fragment)
