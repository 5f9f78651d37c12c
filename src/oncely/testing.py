"""The test kit: test tasks without running a worker process.

* :class:`FrozenClock` — pass ``App(url, clock=FrozenClock(...))`` and move time with
  ``clock.advance(seconds)``; every query of the store sees the frozen ``now``.
* :func:`run_job` — run one task's handler now, with a real :class:`~oncely.JobContext` (fence,
  checkpoints and ``ctx.fenced()`` work against the real store), and get the outcome the worker
  would have recorded.
* :func:`assert_enqueued` — assert that jobs matching a task/args/state are in the store.
* :func:`worker_running` — an in-process worker for integration tests, stopped on exit.
* :func:`wait_until` — poll a condition with a deadline instead of guessing a ``sleep``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from oncely.app import App
from oncely.clock import FrozenClock
from oncely.store.base import JobClaimParams, JobFilter
from oncely.tasks import Task
from oncely.types import Job, JobState
from oncely.worker.context import JobContext
from oncely.worker.execute import Outcome, outcome_of
from oncely.worker.worker import Worker

__all__ = [
    "FrozenClock",
    "RunResult",
    "assert_enqueued",
    "run_job",
    "wait_until",
    "worker_running",
]


@dataclass(frozen=True)
class RunResult:
    job: Job  # the job as stored after the run
    outcome: Outcome

    @property
    def state(self) -> JobState:
        return self.job.state

    @property
    def result(self) -> Any:
        return self.job.result


def run_job(task: Task, lease_ttl: float = 60.0, **args: Any) -> RunResult:
    """Enqueue ``task`` with ``args`` on a private queue, claim it, run its handler in this
    thread with a real context, and record the outcome as a worker would."""
    app = task.app
    private_queue = f"oncely-test-{uuid.uuid4().hex[:12]}"
    handle = app.enqueue_job(task, args, queue=private_queue)
    claim = JobClaimParams("oncely-testing", app.clock.now(), 1, lease_ttl, (private_queue,))
    claimed = app.store.job_claim(claim).jobs
    if not claimed:
        job = app.store.job_get(handle.id)
        raise AssertionError(f"job {handle.id} could not be claimed (state {job and job.state})")
    ctx = JobContext(app.runtime, claimed[0], "oncely-testing")
    outcome = outcome_of(task, ctx, app.clock.now)
    if not outcome.abandoned:
        app.store.job_finish(outcome.finish(claimed[0], app.clock.now()))
    stored = app.store.job_get(handle.id)
    assert stored is not None
    return RunResult(stored, outcome)


def assert_enqueued(
    app: App,
    task: str | Task,
    args: dict[str, Any] | None = None,
    *,
    state: JobState | None = None,
    count: int | None = None,
) -> list[Job]:
    """Return the matching jobs; fail with a readable message when none (or not ``count``)."""
    name = task.name if isinstance(task, Task) else task
    jobs = app.store.job_list(JobFilter(task=name, state=state, limit=10_000))
    matching = [
        job for job in jobs
        if args is None or all(job.args.get(key) == value for key, value in args.items())
    ]
    if (count is None and not matching) or (count is not None and len(matching) != count):
        seen = [(job.id, job.state.value, job.args) for job in jobs[:10]]
        wanted = "at least one" if count is None else str(count)
        raise AssertionError(
            f"expected {wanted} job(s) of {name!r} with args {args} and state {state}; "
            f"found {len(matching)}. Jobs of that task: {seen}"
        )
    return matching


def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
    message: str = "condition",
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        time.sleep(interval)


@contextlib.contextmanager
def worker_running(
    app: App, *, concurrency: int = 2, queues: Sequence[str] | None = None,
    maintenance: bool = True,
) -> Iterator[Worker]:
    """Run a worker in background threads of this process for the duration of the block."""
    worker = app.worker(concurrency=concurrency, queues=queues, maintenance=maintenance)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=30)
