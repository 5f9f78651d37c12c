"""``app.run_now(task, **args)``: run a singleton task once, now, in this process — an operator's
"run it by hand" that keeps every guarantee a worker gives.

The run is a real job on a queue of its own, claimed and run by a one-job worker in this process,
so it holds the task's singleton lease with a fresh fence, the lease keeper renews it (and stops
the run if it cannot: self-fencing), the task's timeout holds, the outcome is a fenced transition
and the attempt is recorded among the executions like any other. It never competes with the
fleet for the run: the key's lease is taken by the claim, or the run is refused.

State machine of one call::

    insert (private queue, one attempt, overlap skip)
      │
      ▼ claim, once
    granted ──► handler runs under the lease (renewed every ttl/3; timeout; self-fence)
      │            └─► succeeded | failed | cancelled  → returned (nothing left waiting)
      ▼ not granted
    skipped (a running job holds the key) or held back (a queue control) or interrupted
      └─► the job is cancelled and deleted, ``job.run_now_refused`` is emitted and
          :class:`~oncely.errors.SingletonBusy` is raised: nothing is left queued

The job has a single attempt whatever the task's retry policy: a failed run is reported to the
caller, not retried later by some worker. An interrupted call (Ctrl-C) releases the job and then
deletes it, so a later worker never runs it. (A worker that serves every queue could claim the
job in the instant between insert and claim; it then runs once there, under the same lease, and
this call reports it as busy.)
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta
from typing import Any

from oncely.errors import ConfigError, SingletonBusy
from oncely.runtime import Runtime
from oncely.store.base import JobClaimParams, PruneParams
from oncely.tasks import Task
from oncely.types import FINISHED_STATES, Job, JobState, Overlap
from oncely.worker.worker import Worker

RUN_NOW_QUEUE = "oncely-run-now"


class OneShotWorker(Worker):
    """A worker that claims once from its private queue, runs what it got, and stops."""

    def __init__(self, runtime: Runtime, queue: str) -> None:
        worker_id = f"run-now:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        super().__init__(runtime, concurrency=1, queues=(queue,), worker_id=worker_id)
        self.claimed: list[Job] = []
        self.skipped: list[Job] = []

    def _claim_loop(self) -> None:
        runtime = self.runtime
        sent = runtime.clock.monotonic()
        params = JobClaimParams(self.worker_id, runtime.clock.now(), 1, self.lease_ttl,
                                self.queues)
        result = runtime.store.job_claim(params)
        self.claimed, self.skipped = list(result.jobs), list(result.skipped_overlap)
        for job in result.jobs:
            self._dispatch(job, sent)
        while self._jobs and not self._stopping.is_set():
            self._capacity.wait(0.05)
            self._capacity.clear()


def run_now(runtime: Runtime, task: Task, args: dict[str, Any], by: str | None) -> Job:
    """Run ``task`` once now under its singleton lease (see the module docstring); returns the
    finished job, or raises SingletonBusy leaving nothing queued."""
    now = runtime.clock.now()
    if task.singleton_key(dict(args), scheduled=True) is None:
        raise ConfigError(f"task {task.name!r} is not a singleton (singleton=False): run_now "
                          "runs singleton tasks only; enqueue it instead")
    queue = f"{RUN_NOW_QUEUE}-{uuid.uuid4().hex[:12]}"
    insert = task.build_insert(dict(args), now, queue=queue, max_attempts=1, scheduled=True,
                               overlap=Overlap.SKIP)
    job = runtime.store.job_insert(insert, now).job
    runtime.events.emit("job.enqueued", job_id=job.id, task=task.name)
    worker = OneShotWorker(runtime, queue)
    try:
        worker.run(install_signals=False)
    finally:
        final = _settle(runtime, job.id, granted=bool(worker.claimed))
    if worker.claimed and final is not None and final.state in FINISHED_STATES:
        return final
    reason = _refusal(runtime, worker, final, insert.singleton_key)
    runtime.events.emit("job.run_now_refused", job_id=job.id, task=task.name, reason=reason,
                        by=by)
    raise SingletonBusy(f"task {task.name!r} was not run: {reason}")


def _settle(runtime: Runtime, job_id: int, granted: bool) -> Job | None:
    """Leave nothing that a worker could run later: a job not run to an end is cancelled, and a
    job that never ran is deleted with its private queue."""
    store, now = runtime.store, runtime.clock.now()
    job = store.job_get(job_id)
    if job is None:
        return None
    cancelled_here = job.state not in FINISHED_STATES and job.state != JobState.RUNNING
    if cancelled_here:
        job = store.job_cancel(job_id, now, "run_now did not run it to an end")
    if (not granted or cancelled_here) and job.state in FINISHED_STATES:
        store.job_prune(PruneParams(job.state, finished_before=now + timedelta(days=1),
                                    queue=job.queue, limit=10))
    return job


def _refusal(runtime: Runtime, worker: OneShotWorker, final: Job | None,
             key: str | None) -> str:
    for job in worker.skipped:
        if job.errors:
            return job.errors[-1].message.removeprefix("skipped: ")
    if final is not None and final.state == JobState.RUNNING:
        return f"another worker ({final.lease_owner}) claimed the job first"
    for lease in runtime.store.lease_list():
        if lease.key == key and lease.owner is not None and lease.job_id is not None:
            return (f"singleton key {key!r} is held by job {lease.job_id} of worker "
                    f"{lease.owner} (fence {lease.fence})")
    return "its lease was not granted (a queue control or limit holds the task back)"
