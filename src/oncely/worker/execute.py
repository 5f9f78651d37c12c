"""Running one handler and turning what it did into the job's next state.

Shared by the worker and by :func:`oncely.testing.run_job`, so a test sees exactly the outcome a
worker would record.

========================================  ===============================================
the handler                               outcome
========================================  ===============================================
returns ``value``                         ``succeeded`` with ``value`` as result (JSON)
raises ``oncely.Retry(delay=d)``          ``retryable`` after ``d`` (or the policy's delay);
                                          ``failed`` when no attempts are left
raises ``oncely.Cancel(reason)``          ``cancelled``
raises ``FenceRejected``                  abandoned: nothing is recorded (the fence moved on)
raises anything else, or times out        ``retryable`` per the task's policy, else ``failed``
========================================  ===============================================

A job whose cancellation was requested ends ``cancelled`` if the handler raised anything.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from oncely.errors import Cancel, FenceRejected
from oncely.retry import Retry
from oncely.store.base import JobFinish
from oncely.tasks import Task
from oncely.types import ErrorKind, Job, JobError, JobState
from oncely.worker.context import JobContext


@dataclass(frozen=True)
class Outcome:
    state: JobState | None  # None: abandoned, nothing to record
    result: Any = None
    error: JobError | None = None
    retry_at: datetime | None = None
    refund_attempt: bool = False

    @property
    def abandoned(self) -> bool:
        return self.state is None

    def finish(self, job: Job, now: datetime) -> JobFinish:
        assert self.state is not None
        return JobFinish(
            job_id=job.id,
            fence=job.fence,
            now=now,
            state=self.state,
            result=self.result,
            error=self.error,
            retry_at=self.retry_at,
            refund_attempt=self.refund_attempt,
        )


ABANDONED = Outcome(state=None)


def call_handler(task: Task, ctx: JobContext) -> Any:
    if task.is_async:
        return asyncio.run(task.fn(ctx, **ctx.job.args))
    return task.fn(ctx, **ctx.job.args)


def json_result(value: Any) -> Any:
    """The value as it will be stored; something JSON cannot hold is kept as its repr."""
    if value is None or type(value) in (str, int, bool):
        return value  # stored as is (the common case: a handler that returns nothing)
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return {"repr": repr(value)}


def failure(
    task: Task | None, job: Job, now: datetime, kind: ErrorKind, message: str, tb: str | None
) -> Outcome:
    """Retry per the task's policy while attempts remain, else fail."""
    error = JobError(job.attempt, now, kind, message, tb)
    if job.attempt < job.max_attempts:
        policy = task.options.retry if task is not None else Retry(attempts=job.max_attempts)
        retry_at = policy.next_retry_at(job.attempt, now)
        return Outcome(JobState.RETRYABLE, error=error, retry_at=retry_at)
    return Outcome(JobState.FAILED, error=error)


def outcome_of(task: Task, ctx: JobContext, now_fn: Any) -> Outcome:
    """Run the handler and classify what happened."""
    job = ctx.job
    try:
        value = call_handler(task, ctx)
    except FenceRejected:
        return ABANDONED
    except Retry as request:
        now = now_fn()
        error = JobError(job.attempt, now, ErrorKind.RETRY, request.reason)
        if job.attempt >= job.max_attempts:
            return Outcome(JobState.FAILED, error=error)
        delay = request.delay
        if delay is None:
            delay = task.options.retry.delay_after(job.attempt)
        return Outcome(JobState.RETRYABLE, error=error, retry_at=now + timedelta(seconds=delay))
    except Cancel as cancel:
        if ctx.cancelled:
            return stopped(task, ctx, now_fn(), cancel.reason, None)
        error = JobError(job.attempt, now_fn(), ErrorKind.CANCELLED, cancel.reason)
        return Outcome(JobState.CANCELLED, error=error)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        if ctx.cancelled:
            # Raising after a stop request is how a handler honours it.
            return stopped(task, ctx, now_fn(), message, traceback.format_exc())
        return failure(task, job, now_fn(), ErrorKind.ERROR, message, traceback.format_exc())
    return Outcome(JobState.SUCCEEDED, result=json_result(value))


def stopped(task: Task, ctx: JobContext, now: datetime, message: str, tb: str | None) -> Outcome:
    """The outcome of a handler that ended after the worker or a human asked it to stop."""
    job, kind = ctx.job, ctx.cancel_kind
    detail = f"{ctx.cancel_reason or kind.value}: {message}"
    if ctx.lease_lost.is_set():
        return ABANDONED
    if kind == ErrorKind.TIMEOUT:
        return failure(task, job, now, ErrorKind.TIMEOUT, detail, tb)
    if kind == ErrorKind.SHUTDOWN:
        error = JobError(job.attempt, now, ErrorKind.SHUTDOWN, detail, tb)
        return Outcome(JobState.RETRYABLE, error=error, retry_at=now, refund_attempt=True)
    error = JobError(job.attempt, now, ErrorKind.CANCELLED, detail, tb)
    return Outcome(JobState.CANCELLED, error=error)
