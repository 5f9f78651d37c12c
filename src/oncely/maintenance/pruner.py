"""The pruner: retention of finished jobs, in small batches so the queue is never locked long.

Defaults (see :mod:`oncely.config`): succeeded jobs are kept a day, cancelled jobs a week, and the
newest 10,000 failed jobs are kept as dead letters whatever their age. Slot ledger rows outlive
their jobs, so the once-per-slot guarantee does not depend on job retention. Recorded executions,
fleet events and resolved anomalies are kept for ``ledger_keep_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from oncely.app import App
from oncely.store.base import JobState, PruneParams


@dataclass(frozen=True)
class PruneResult:
    deleted: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


class Pruner:
    def __init__(self, app: App, batch: int = 1000, max_batches: int = 10) -> None:
        self.app = app
        self.batch = batch
        self.max_batches = max_batches

    def policies(self) -> list[PruneParams]:
        settings, now = self.app.settings, self.app.clock.now()
        return [
            PruneParams(JobState.SUCCEEDED,
                        finished_before=now - timedelta(seconds=settings.keep_succeeded_seconds),
                        limit=self.batch),
            PruneParams(JobState.CANCELLED,
                        finished_before=now - timedelta(seconds=settings.keep_cancelled_seconds),
                        limit=self.batch),
            PruneParams(JobState.FAILED, keep_last=settings.keep_failed, limit=self.batch),
        ]

    def run_once(self) -> PruneResult:
        deleted: dict[str, int] = {}
        for params in self.policies():
            total = 0
            for _ in range(self.max_batches):
                count = self.app.store.job_prune(params)
                total += count
                if count < params.limit:
                    break
            deleted[str(params.state)] = total
        keep = timedelta(seconds=self.app.settings.ledger_keep_seconds)
        observations = 0
        for _ in range(self.max_batches):
            count = self.app.store.observation_prune(self.app.clock.now() - keep, self.batch)
            observations += count
            if count < self.batch:
                break
        deleted["observations"] = observations
        if any(deleted.values()):
            self.app.events.emit("maintenance.pruned", **deleted)
        return PruneResult(deleted)
