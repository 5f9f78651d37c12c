"""The facade's actions on jobs, queues and schedules, mixed into :class:`oncely.App`.

The command line, the dashboard and applications call these, never the store: each action is
one store operation, wakes the workers it concerns, and emits its event (docs/events.md) with
``by`` — who asked (``"cli"``, ``"dashboard"``, a user name), when the caller knows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oncely.controls import retry_dead_letters
from oncely.errors import NotFound
from oncely.observe.diagnose import WatchdogConfig
from oncely.store.base import UpsertOutcome
from oncely.tasks import Task
from oncely.types import Job, JobState
from oncely.validate import check_name, check_reason

if TYPE_CHECKING:
    from oncely.clock import Clock
    from oncely.maintenance.watchdog import WatchdogResult
    from oncely.observe.doctor import DoctorReport
    from oncely.observe.events import EventBus
    from oncely.runtime import Runtime
    from oncely.store.base import Store
    from oncely.store.controls import Control


class Operations:
    if TYPE_CHECKING:
        clock: Clock
        events: EventBus

        @property
        def store(self) -> Store: ...
        @property
        def runtime(self) -> Runtime: ...
        def get_task(self, name: str) -> Task: ...

    # jobs --------------------------------------------------------------------------------
    def retry_job(self, job_id: int, *, by: str | None = None) -> Job:
        """Run a failed, cancelled, retryable or scheduled job again now. Raises NotFound, or
        ConfigError for a job that cannot be retried (running, succeeded)."""
        job = self.store.job_retry(job_id, self.clock.now())
        self.store.notify_work(job.queue)
        self.events.emit("job.retry_requested", job_id=job.id, task=job.task, by=by)
        return job

    def cancel_job(self, job_id: int, reason: str = "cancelled", *, by: str | None = None) -> Job:
        """Cancel a waiting job, or ask a running one to stop (its handler sees
        ``ctx.cancelled``). ``reason`` is checked like every operator's reason
        (:func:`oncely.validate.check_reason`)."""
        reason = check_reason(reason) or "cancelled"
        job = self.store.job_cancel(job_id, self.clock.now(), reason)
        self.events.emit("job.cancel_requested", job_id=job.id, task=job.task,
                         running=job.state == JobState.RUNNING, reason=reason, by=by)
        return job

    def retry_dead_letters(self, queue: str | None = None, task: str | None = None, *,
                           by: str | None = None) -> tuple[int, list[int]]:
        """Bring every failed job (of ``queue``/``task``) back; returns how many, and the ids
        left failed because an unfinished job holds their unique key."""
        retried, conflicts = retry_dead_letters(self.runtime, queue, task)
        self.events.emit("job.dead_letters_retried", queue=queue, task=task, retried=retried,
                         conflicts=len(conflicts), by=by)
        return retried, conflicts

    def get_job(self, job_id: int) -> Job | None:
        return self.store.job_get(job_id)

    # queues ------------------------------------------------------------------------------
    def pause_queue(self, name: str, reason: str | None = None, *,
                    by: str | None = None) -> Control:
        """Stop starting jobs of queue ``name`` on every worker; running jobs finish."""
        reason = check_reason(reason)
        control = self.store.control_pause(check_name("queue", name), True, self.clock.now())
        self.events.emit("queue.paused", queue=name, reason=reason, by=by)
        return control

    def resume_queue(self, name: str, *, by: str | None = None) -> Control:
        """Start jobs of queue ``name`` again."""
        control = self.store.control_pause(check_name("queue", name), False, self.clock.now())
        self.store.notify_work(name)
        self.events.emit("queue.resumed", queue=name, by=by)
        return control

    def resolve_anomaly(self, anomaly_id: int, *, by: str | None = None) -> None:
        """Close an open anomaly by hand (the watchdog reopens it if its condition persists);
        raises NotFound when there is no open anomaly of that id."""
        found = self.store.anomaly_get(anomaly_id)
        if found is None or not self.store.anomaly_resolve(anomaly_id, self.clock.now()):
            raise NotFound(f"no open anomaly {anomaly_id}")
        self.events.emit("anomaly.resolved", anomaly_id=anomaly_id, kind=str(found.kind),
                         subject=found.subject, schedule=found.schedule, by=by)

    # running -----------------------------------------------------------------------------
    def run_now(self, task: str | Task, /, *, by: str | None = None, **args: Any) -> Job:
        """Run a singleton task once, now, in this process, under its lease (renewed) and its
        timeout; returns the finished job (``succeeded``, ``failed`` or ``cancelled``: one
        attempt, never retried later). Raises SingletonBusy, leaving nothing queued, when its
        singleton lease is held (:mod:`oncely.run_now`)."""
        from oncely.run_now import run_now

        resolved = task if isinstance(task, Task) else self.get_task(task)
        return run_now(self.runtime, resolved, args, by)

    def register_schedules(self) -> dict[str, UpsertOutcome]:
        """Upsert the declared schedules now (every worker does it as it starts)."""
        from oncely.maintenance.enqueuer import register_schedules

        return register_schedules(self.runtime)

    def run_watchdog(self, config: WatchdogConfig | None = None) -> WatchdogResult:
        """One run of the watchdog now (the leader runs it every ``watchdog_interval``)."""
        from oncely.maintenance.watchdog import Watchdog

        return Watchdog(self.runtime, config).run_once()

    def doctor(self, config: WatchdogConfig | None = None) -> DoctorReport:
        """The doctor's report (``oncely doctor``): findings, evidence, what to do."""
        from oncely.observe.doctor import examine

        return examine(self.runtime, config)
