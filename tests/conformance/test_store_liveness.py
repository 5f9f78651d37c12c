"""Liveness locks and the rescue transition, on every store (see oncely.store.rescue).

The owner is a real child process that registers, takes its liveness lock and claims a job with a
long lease; the test stops and kills it with real signals. Only a dead owner is reported gone, and
its job can then be rescued at once, long before its lease would expire.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from oncely.store.base import Store
from oncely.store.observability import ExecutionWindow
from oncely.store.params import JobClaimParams, JobInsert, WorkerInfo
from oncely.store.rescue import JobRescue
from oncely.testing import wait_until
from oncely.types import ErrorKind, JobState

ROOT = Path(__file__).resolve().parents[2]
OWNER = """
import os, sys, time
from datetime import UTC, datetime
from oncely.store import open_store
from oncely.store.base import JobClaimParams, WorkerInfo
store = open_store(sys.argv[1])
worker = sys.argv[2]
store.worker_register(WorkerInfo(worker, "host", os.getpid(), None, 1, datetime.now(UTC)))
hold = store.liveness_hold(worker)
claimed = store.job_claim(JobClaimParams(worker, datetime.now(UTC), 1, 600.0))
print(claimed.jobs[0].id, claimed.jobs[0].fence, flush=True)
time.sleep(600)
"""


@pytest.fixture
def owner(store: Store) -> Iterator[tuple[subprocess.Popen[str], str, int, int]]:
    if store.dialect == "sqlite" and ":memory:" in store.url:
        pytest.skip("an in-memory database has no other process")
    store.job_insert(JobInsert(task="t"), datetime.now(UTC))
    worker_id = f"owner-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-c", OWNER, store.url, worker_id],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert proc.stdout is not None
        job_id, fence = (int(part) for part in proc.stdout.readline().split())
        yield proc, worker_id, job_id, fence
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_only_an_owner_whose_process_ended_is_gone(store: Store, owner) -> None:
    proc, worker_id, _, _ = owner
    assert store.worker_owners_gone("me") == []
    os.kill(proc.pid, signal.SIGSTOP)  # frozen, not dead: it still holds its lock
    assert store.worker_owners_gone("me") == []
    os.kill(proc.pid, signal.SIGCONT)
    proc.kill()
    proc.wait()
    # The server ends the session once it reads the closed socket: a moment after the death.
    wait_until(lambda: store.worker_owners_gone("me") == [worker_id], timeout=30,
               message="the dead owner reported gone")
    assert store.worker_owners_gone(worker_id) == []  # nobody reports itself


def test_an_owner_without_a_liveness_lock_is_never_reported_gone(store: Store) -> None:
    now = datetime.now(UTC)
    store.job_insert(JobInsert(task="t"), now)
    store.worker_register(WorkerInfo("ghost", "host", 1, None, 1, now))
    assert store.job_claim(JobClaimParams("ghost", now, 1, 600.0)).jobs
    assert store.worker_owners_gone("me") == []


def test_a_gone_owners_job_is_rescued_before_its_lease_expires(store: Store, owner) -> None:
    proc, worker_id, job_id, fence = owner
    proc.kill()
    proc.wait()
    now = datetime.now(UTC)
    (running,) = store.job_running_of(worker_id)
    assert running.id == job_id and running.lease_expires_at is not None
    assert running.lease_expires_at > now  # 600 s left
    rescue = JobRescue(job_id, fence, now, f"worker {worker_id} is gone", owner=worker_id)
    assert store.job_rescue(JobRescue(job_id, fence, now, "wrong owner", owner="other")) is None
    assert store.job_rescue(JobRescue(job_id, fence, now, "not expired")) is None
    outcome = store.job_rescue(rescue)
    assert outcome is not None and (outcome.state, outcome.rescues) == (JobState.RETRYABLE, 1)
    assert store.job_rescue(rescue) is None  # done once
    job = store.job_get(job_id)
    assert job is not None and job.state == JobState.RETRYABLE and job.attempt == 0
    (error,) = job.errors
    assert error.kind == ErrorKind.WORKER_GONE and error.attempt == 1
    assert error.message == f"rescued (1 of 3), attempt given back: worker {worker_id} is gone"
    assert store.job_running_of(worker_id) == []
    # The attempt its worker's death cut short is counted as lost (the watchdog counts the slot's
    # run once, not once per attempt).
    window = ExecutionWindow(now - timedelta(hours=1), datetime.now(UTC) + timedelta(seconds=1))
    (count,) = store.execution_counts(window)
    assert (count.executions, count.lost) == (1, 1)
