"""Stores with real data for the watchdog, doctor, metrics and dashboard tests, driven with a
frozen clock through the engine's own store calls (claim, fenced finish, the slot enqueuer).

``incident()`` replays the billing incident's pattern: several workers start, each enqueues an
immediate run of the hourly free-tier job beside the schedule (no dedup key), and every run fails
and is retried up to five attempts with exponential backoff from 5 s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import oncely
from oncely.maintenance.enqueuer import SlotEnqueuer
from oncely.store.params import JobClaimParams, JobFinish
from oncely.types import ErrorKind, Job, JobState
from oncely.worker.execute import failure

SCHEDULE = "free-tier-thresholds"
TASK = "billing.thresholds"
START = datetime(2026, 11, 30, 0, 0, 0, tzinfo=UTC)


def billing_app(url: str, clock: oncely.FrozenClock, **settings: object) -> oncely.App:
    app = oncely.App(url, clock=clock, settings=oncely.Settings(**settings))  # type: ignore[arg-type]

    @app.task(name=TASK, queue="billing",
              retry=oncely.RetryPolicy(attempts=5, backoff="exponential", base_delay=5.0,
                                       jitter=False))
    def thresholds(ctx: oncely.JobContext, org: int = 0) -> dict[str, int]:
        return {"orgs": 50_000}

    @app.task(name="emails.send", queue="default")
    def send(ctx: oncely.JobContext, to: str = "", api_key: str = "") -> None:
        return None

    app.schedule(SCHEDULE, TASK, cron="35 * * * *")
    return app


def billing_app_from_env() -> oncely.App:
    """The same app on the real clock and ``ONCELY_DATABASE_URL``, for the command line:
    ``--app tests.observe_data:billing_app_from_env``."""
    return billing_app(os.environ["ONCELY_DATABASE_URL"], oncely.SystemClock())  # type: ignore[arg-type]


def work(
    app: oncely.App,
    worker: str = "w1",
    fail: Callable[[Job], bool] = lambda job: False,
    run_seconds: float = 2.0,
    limit: int = 100,
) -> list[Job]:
    """Claim what is due as ``worker``, let it run ``run_seconds``, finish it (failing the jobs
    ``fail`` picks, which are retried per their task's policy). Returns the claimed jobs."""
    clock = app.clock
    claimed = app.store.job_claim(JobClaimParams(worker, clock.now(), limit, 60.0)).jobs
    clock.sleep(run_seconds)
    for job in claimed:
        now = clock.now()
        if fail(job):
            outcome = failure(app.tasks.get(job.task), job, now, ErrorKind.ERROR,
                              "analytics query timed out after 120 s", None)
            app.store.job_finish(outcome.finish(job, now))
        else:
            app.store.job_finish(JobFinish(job.id, job.fence, now, JobState.SUCCEEDED,
                                           result={"orgs": 50_000}))
    return claimed


def healthy_hours(app: oncely.App, hours: int, worker: str = "w1") -> None:
    """Run the schedule as intended: each hour the slot is enqueued and runs once."""
    enqueuer = SlotEnqueuer(app.runtime)
    for _ in range(hours):
        next_slot(app)
        enqueuer.run_once()
        work(app, worker, run_seconds=30)


def incident(app: oncely.App, workers: int = 6) -> None:
    """``workers`` workers start at once; each registers the schedule and enqueues an immediate
    run of the task beside it; every immediate run fails and is retried to its last attempt; the
    hour's slot runs once and succeeds."""
    app.register_schedules()
    for index in range(workers):
        app.enqueue(TASK)
        work(app, f"worker-{index}", fail=lambda job: job.schedule is None, run_seconds=1)
    for _ in range(60):  # retries come due after 5, 10, 20, 40 s
        app.clock.sleep(5)
        for index in range(workers):
            work(app, f"worker-{index}", fail=lambda job: job.schedule is None, run_seconds=0)
    next_slot(app)
    SlotEnqueuer(app.runtime).run_once()
    work(app, "worker-0", run_seconds=30)


def next_slot(app: oncely.App) -> None:
    """Move the clock to the schedule's next :35."""
    target = app.clock.now().replace(minute=35, second=0, microsecond=0)
    if target <= app.clock.now():
        target += timedelta(hours=1)
    app.clock.set(target)
