"""The rescuer: running jobs whose worker died or went silent go back to work.

Every worker runs it, often (every maintenance tick, about every half second): it is cheap (two
indexed look-ups when there is nothing to do) and safe to run anywhere at once, because each
rescue is a fenced transition that re-checks its condition inside the store. It takes over:

* jobs whose owner is **provably gone** (:meth:`Store.worker_owners_gone
  <oncely.store.base.Store.worker_owners_gone>`: its liveness lock was released, see
  :mod:`oncely.worker.liveness`) — at once, without waiting for their leases to run out;
* jobs whose **lease expired** — the owner may be alive but frozen or cut off; the lease TTL is
  the bound for those.

A rescued job is retried at once with its attempt given back (a lost attempt is not the handler's
failure), up to ``max_rescues`` times; the rescue after that fails it (the rule is
:func:`oncely.lifecycle.rescue_state`, applied by the store inside the rescue's transaction, see
:mod:`oncely.store.rescue`). Each rescue is reported as a ``job.rescued`` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from oncely.runtime import Runtime
from oncely.store.rescue import JobRescue
from oncely.types import Job, JobState


@dataclass(frozen=True)
class RescueResult:
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    owners_gone: list[str] = field(default_factory=list)


class Rescuer:
    def __init__(self, runtime: Runtime, batch: int = 200, worker_id: str = "") -> None:
        self.runtime = runtime
        self.batch = batch
        self.worker_id = worker_id  # this worker: never proven gone by itself

    def run_once(self) -> RescueResult:
        app = self.runtime
        result = RescueResult()
        gone = app.store.worker_owners_gone(self.worker_id)
        for owner in gone:
            result.owners_gone.append(owner)
            for job in app.store.job_running_of(owner, self.batch):
                self._rescue(job, app.clock.now(), result, owner)
        now = app.clock.now()
        for job in app.store.job_expired(now, self.batch):
            self._rescue(job, now, result, None)
        return result

    def _rescue(self, job: Job, now: datetime, result: RescueResult, gone: str | None) -> None:
        if gone is not None:
            reason = f"worker {gone} is gone (its liveness lock was released)"
        else:
            expired = job.lease_expires_at.isoformat() if job.lease_expires_at else "?"
            reason = f"lease expired at {expired}; worker {job.lease_owner} presumed dead"
        params = JobRescue(job.id, job.fence, now, reason, self.runtime.settings.max_rescues,
                           owner=gone)
        outcome = self.runtime.store.job_rescue(params)
        if outcome is None:
            return  # renewed, finished or claimed again meanwhile
        back = outcome.state == JobState.RETRYABLE
        (result.retried if back else result.failed).append(job.id)
        self.runtime.events.emit("job.rescued", job_id=job.id, task=job.task, fence=job.fence,
                                 owner=job.lease_owner, outcome=str(outcome.state),
                                 reason=str(params.kind), rescues=outcome.rescues)
