"""The read API of the facade, ``app.read``: what an application may read about its jobs and
schedules — to show them, or to measure a run — without reaching into the store.

Every method is one query of the store's documented operations and returns the engine's own
value types (:class:`~oncely.Job`, :class:`~oncely.ScheduleSpec`, executions, ledger rows,
anomalies: frozen dataclasses whose fields are listed in docs/facade.md). Nothing here writes.
"""

from __future__ import annotations

from datetime import datetime

from oncely.runtime import Runtime
from oncely.schedules import ScheduleSpec, latest_slot, slots_between
from oncely.store.base import JobFilter, SlotRecord
from oncely.store.observability import Anomaly, Execution
from oncely.types import Job, JobState


class Reads:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def job(self, job_id: int) -> Job | None:
        return self._runtime.store.job_get(job_id)

    def jobs(self, *, state: JobState | str | None = None, task: str | None = None,
             queue: str | None = None, schedule: str | None = None,
             limit: int = 100) -> list[Job]:
        """Jobs, newest first."""
        wanted = JobState(state) if state is not None else None
        return self._runtime.store.job_list(
            JobFilter(state=wanted, queue=queue, task=task, schedule=schedule, limit=limit))

    def job_counts(self) -> dict[str, dict[str, int]]:
        """Per queue, how many jobs are in each state (states with none are left out)."""
        table: dict[str, dict[str, int]] = {}
        for row in self._runtime.store.job_counts():
            counts = table.setdefault(row.queue, {})
            counts[str(row.state)] = counts.get(str(row.state), 0) + row.count
        return table

    def schedule(self, name: str) -> ScheduleSpec | None:
        """The definition in force (the stored one, whichever worker registered it);
        InvalidSchedule when the stored definition does not parse."""
        row = self._runtime.store.schedule_get(name)
        return None if row is None else ScheduleSpec.from_spec_dict(row.spec)

    def latest_slot(self, spec: ScheduleSpec, at: datetime) -> datetime | None:
        """The schedule's newest slot at or before ``at``."""
        return latest_slot(spec, at)

    def slots(self, spec: ScheduleSpec, after: datetime, until: datetime) -> list[datetime]:
        """The schedule's slots in ``(after, until]``, oldest first: its expected runs."""
        return list(slots_between(spec, after, until))

    def ledger(self, schedule: str, limit: int = 100) -> list[SlotRecord]:
        """The slot ledger of a schedule, newest slot first: every slot and its outcome."""
        return self._runtime.store.ledger_list(schedule, limit=limit)

    def executions(self, task: str | None = None, limit: int = 100) -> list[Execution]:
        """Recorded attempts (one per attempt a worker started), newest first."""
        return self._runtime.store.execution_list(task=task, limit=limit)

    def execution_overlaps(self, task: str, since: datetime, until: datetime) -> int:
        """Attempts of ``task`` started in ``(since, until]`` while another was running."""
        return self._runtime.store.execution_overlaps(task, since, until)

    def fleet_event_counts(self, since: datetime) -> dict[str, int]:
        """Events recorded in the store for the whole fleet (``fence.rejected``,
        ``lease.taken_over``) per name, at or after ``since``."""
        return self._runtime.store.event_counts(since)

    def anomalies(self, open_only: bool = True, limit: int = 100) -> list[Anomaly]:
        """The watchdog's anomalies, newest first."""
        return self._runtime.store.anomaly_list(open_only=open_only, limit=limit)
