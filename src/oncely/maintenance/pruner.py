"""The pruner: retention of finished jobs per queue, in small batches so the queue is never locked
long.

Each queue keeps, per final state, finished jobs up to an age and up to a count (the newest); a job
goes as soon as either says so. A queue's own retention comes from its control
(``app.queue(name, retention=…)``, upserted by the workers that declare it, so the leader prunes
every queue of the fleet by its own rules); the rest comes from the settings: succeeded jobs a day
and at most 100,000, dead letters (failed) 180 days and at most 10,000, cancelled jobs 7 days and
at most 10,000 — per queue.

Every batch is one short transaction of at most ``batch`` rows along the ``(queue, state,
finished_at)`` index, followed by a pause as long as the batch took, so claims and finishes get
the database at least half the time (on SQLite, where a batch holds the one write lock, this is
what keeps workers running while a large backlog is pruned). A run stops after ``budget``
seconds, so the leader's other services are not held up; the supervisor runs it again at its next
tick rather than a whole ``maintenance_interval`` later while ``caught_up`` is False.

Slot ledger rows outlive their jobs, so the once-per-slot guarantee does not depend on job
retention. Recorded executions, fleet events and resolved anomalies are kept for
``ledger_keep_seconds``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from oncely.queues import Keep, default_retention, retention_for
from oncely.runtime import Runtime
from oncely.store.base import PruneParams
from oncely.store.controls import ControlKind
from oncely.types import JobState


@dataclass(frozen=True)
class PruneResult:
    deleted: dict[str, int]
    complete: bool = True  # False: the time budget ran out with more to delete

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


class Pruner:
    def __init__(self, runtime: Runtime, batch: int = 1000, budget: float = 0.5) -> None:
        if batch < 1 or budget <= 0:
            raise ValueError("the pruner needs batch >= 1 and budget > 0")
        self.runtime = runtime
        self.batch = batch
        self.budget = budget
        self.caught_up = True  # False after a run that left jobs to delete

    def policies(self) -> list[tuple[str, JobState, Keep]]:
        """(queue, state, what to keep) for every queue with finished jobs."""
        store, settings = self.runtime.store, self.runtime.settings
        declared = {c.name: c.retention for c in store.control_list()
                    if c.kind == ControlKind.QUEUE}
        policies: list[tuple[str, JobState, Keep]] = []
        for queue in store.job_finished_queues():
            retention = (retention_for(declared[queue], settings) if queue in declared
                         else default_retention(settings))
            policies.extend((queue, state, keep) for state, keep in retention.items())
        return policies

    def cutoff(self, queue: str, state: JobState, keep: Keep, now: datetime) -> datetime | None:
        """Jobs of ``queue`` in ``state`` that finished before this instant go."""
        cutoffs = []
        if keep.age_seconds is not None:
            cutoffs.append(now - timedelta(seconds=keep.age_seconds))
        if keep.count == 0:
            cutoffs.append(now + timedelta(microseconds=1))
        elif keep.count is not None:
            found = self.runtime.store.job_finished_cutoff(queue, state, keep.count)
            if found is not None:
                cutoffs.append(found)
        return max(cutoffs, default=None)

    def run_once(self) -> PruneResult:
        deadline = time.monotonic() + self.budget
        deleted = {str(state): 0 for state in (JobState.SUCCEEDED, JobState.FAILED,
                                               JobState.CANCELLED)}
        complete = True
        for queue, state, keep in self.policies():
            before = self.cutoff(queue, state, keep, self.runtime.clock.now())
            if before is None:
                continue
            params = PruneParams(state, finished_before=before, queue=queue, limit=self.batch)
            count, done = self._prune(params, deadline)
            deleted[str(state)] += count
            if not done:
                complete = False
                break
        deleted["observations"] = self._prune_observations(deadline)
        self.caught_up = complete
        if any(deleted.values()):
            self.runtime.events.emit("maintenance.pruned", **deleted)
        return PruneResult(deleted, complete)

    def _prune(self, params: PruneParams, deadline: float) -> tuple[int, bool]:
        """Delete in batches until none is left (True) or the budget is spent (False)."""
        total = 0
        while True:
            began = time.monotonic()
            count = self.runtime.store.job_prune(params)
            total += count
            if count < params.limit:
                return total, True
            took = time.monotonic() - began
            if time.monotonic() + took >= deadline:
                return total, False
            time.sleep(took)  # give claims and finishes their turn

    def _prune_observations(self, deadline: float) -> int:
        keep = timedelta(seconds=self.runtime.settings.ledger_keep_seconds)
        total = 0
        while time.monotonic() < deadline:
            before = self.runtime.clock.now() - keep
            count = self.runtime.store.observation_prune(before, self.batch)
            total += count
            if count < self.batch:
                break
        return total
