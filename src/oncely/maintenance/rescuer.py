"""The rescuer: running jobs whose lease expired (their worker died or froze) go back to work.

Each expired job gets a ``lease_expired`` error naming its last owner and is retried per its
task's policy, or failed when no attempts are left (its slot then ends ``failed``). The transition
re-checks the expiry and the fence in the store, so a worker whose renewal won the race keeps its
job, and a second rescuer running at the same moment changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oncely.runtime import Runtime
from oncely.store.base import JobFinish
from oncely.types import ErrorKind, JobState
from oncely.worker.execute import failure


@dataclass(frozen=True)
class RescueResult:
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


class Rescuer:
    def __init__(self, runtime: Runtime, batch: int = 200) -> None:
        self.runtime = runtime
        self.batch = batch

    def run_once(self) -> RescueResult:
        runtime = self.runtime
        now = runtime.clock.now()
        retried: list[int] = []
        failed: list[int] = []
        for job in runtime.store.job_expired(now, self.batch):
            expired = job.lease_expires_at.isoformat() if job.lease_expires_at else "?"
            message = f"lease expired at {expired}; worker {job.lease_owner} presumed dead"
            outcome = failure(runtime.tasks.get(job.task), job, now, ErrorKind.LEASE_EXPIRED,
                              message, None)
            params = JobFinish(job.id, job.fence, now, outcome.state or JobState.FAILED,
                               error=outcome.error, retry_at=outcome.retry_at,
                               require_expired_lease=True)
            if not runtime.store.job_finish(params):
                continue
            (retried if outcome.state == JobState.RETRYABLE else failed).append(job.id)
            runtime.events.emit("job.rescued", job_id=job.id, task=job.task, fence=job.fence,
                                owner=job.lease_owner, outcome=str(outcome.state))
        return RescueResult(retried, failed)
