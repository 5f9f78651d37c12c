"""Running one handler and turning what it did into the job's next state.

Shared by the worker and by :func:`oncely.testing.run_job`, so a test sees exactly the outcome a
worker would record.

========================================  ===============================================
the handler                               outcome
========================================  ===============================================
is not called: the job's args do not fit  ``failed``: ``args do not fit the handler: …``,
it (:class:`~oncely.tasks.HandlerArgs`)   no retry (every attempt would fail alike)
returns ``value``                         ``succeeded`` with ``value`` as result (JSON)
returns what no store can hold            ``failed``: ``result not storable: …`` (see
                                          :mod:`oncely.worker.storable`)
raises ``oncely.Retry(delay=d)``          ``retryable`` after ``d`` (or the policy's delay);
                                          ``failed`` when no attempts are left
raises ``oncely.Cancel(reason)``          ``cancelled``
raises ``FenceRejected``                  abandoned: nothing is recorded (the fence moved on)
raises anything else, or times out        ``retryable`` per the task's policy, else ``failed``
(``BaseException`` included: ``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit``…)
========================================  ===============================================

A job whose cancellation was requested ends ``cancelled`` if the handler raised anything. Which
state each of these records, whether it gives the attempt back and whether a failed attempt is
retried is :mod:`oncely.lifecycle`'s (:meth:`Outcome.of`, :func:`~oncely.lifecycle.attempt_failed`).
Nothing a handler raises escapes :func:`outcome_of`: the handler thread survives it, and an
exception whose ``str()`` fails is recorded by its type's name. Error texts are cleaned of what the
store cannot hold when the outcome is turned into a store call (:meth:`Outcome.finish`).
"""

from __future__ import annotations

import asyncio
import traceback
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from oncely import lifecycle
from oncely.errors import Cancel, FenceRejected
from oncely.lifecycle import JobEvent
from oncely.retry import Retry, RetryPolicy
from oncely.store.base import JobFinish
from oncely.tasks import Task
from oncely.types import ErrorKind, Job, JobError, JobState
from oncely.worker.context import JobContext
from oncely.worker.storable import NotStorable, clean_text, storable


@dataclass(frozen=True)
class Outcome:
    state: JobState | None  # None: abandoned, nothing to record
    result: Any = None
    error: JobError | None = None
    retry_at: datetime | None = None
    refund_attempt: bool = False

    @classmethod
    def of(
        cls, event: JobEvent, *, result: Any = None, error: JobError | None = None,
        retry_at: datetime | None = None,
    ) -> Outcome:
        """The outcome that records ``event``: the state it moves the running job to and whether
        it gives the attempt back, as :mod:`oncely.lifecycle` says."""
        return cls(lifecycle.FINISH_STATE[event], result, error, retry_at,
                   event in lifecycle.REFUNDS_ATTEMPT)

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
            error=clean_error(self.error),
            retry_at=self.retry_at,
            refund_attempt=self.refund_attempt,
        )


ABANDONED = Outcome(state=None)
RETURNED_NOTHING = Outcome.of(JobEvent.SUCCEED)  # the common success: shared, it is immutable


def call_handler(task: Task, ctx: JobContext) -> Any:
    if task.is_async:
        return asyncio.run(task.fn(ctx, **ctx.job.args))
    return task.fn(ctx, **ctx.job.args)


def clean_error(error: JobError | None) -> JobError | None:
    """The error with texts the store can hold (NUL and lone surrogates escaped)."""
    if error is None:
        return None
    message = clean_text(error.message if isinstance(error.message, str) else repr(error.message))
    tb = error.traceback if isinstance(error.traceback, str | None) else repr(error.traceback)
    tb = None if tb is None else clean_text(tb)
    if message is error.message and tb is error.traceback:
        return error
    return replace(error, message=message, traceback=tb)


def describe(exc: BaseException) -> str:
    """``Type: message``; the type's name alone when the message is empty or ``str()`` fails."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except BaseException:  # a broken __str__ must not take the handler thread down
        return f"{name} (its message could not be read)"
    return f"{name}: {text}" if text else name


def format_traceback() -> str | None:
    try:
        return traceback.format_exc()
    except BaseException:
        return None


def failure(
    task: Task | None, job: Job, now: datetime, kind: ErrorKind, message: str, tb: str | None
) -> Outcome:
    """Retry per the task's policy while attempts remain, else fail."""
    error = JobError(job.attempt, now, kind, message, tb)
    event = lifecycle.attempt_failed(job.attempt, job.max_attempts)
    if event == JobEvent.RETRY:
        policy = task.options.retry if task is not None else RetryPolicy(attempts=job.max_attempts)
        return Outcome.of(event, error=error, retry_at=policy.next_retry_at(job.attempt, now))
    return Outcome.of(event, error=error)


def outcome_of(task: Task, ctx: JobContext, now_fn: Any) -> Outcome:
    """Run the handler and classify what happened."""
    job = ctx.job
    misfit = task.handler_args.mismatch(job.args)
    if misfit is not None:
        # Stored by a release whose handler took other args: every attempt would fail alike.
        return Outcome.of(JobEvent.FAIL, error=JobError(
            job.attempt, now_fn(), ErrorKind.ERROR, f"args do not fit the handler: {misfit}"))
    try:
        value = call_handler(task, ctx)
    except FenceRejected:
        return ABANDONED
    except Retry as request:
        now = now_fn()
        error = JobError(job.attempt, now, ErrorKind.RETRY, request.reason)
        event = lifecycle.attempt_failed(job.attempt, job.max_attempts)
        if event == JobEvent.FAIL:
            return Outcome.of(event, error=error)
        delay = request.delay
        if delay is None:
            delay = task.options.retry.delay_after(job.attempt)
        return Outcome.of(event, error=error, retry_at=now + timedelta(seconds=delay))
    except Cancel as cancel:
        if ctx.cancelled:
            return stopped(task, ctx, now_fn(), cancel.reason, None)
        error = JobError(job.attempt, now_fn(), ErrorKind.CANCELLED, cancel.reason)
        return Outcome.of(JobEvent.CANCEL, error=error)
    except BaseException as exc:  # SystemExit and the like too: the thread must survive them
        message, tb = describe(exc), format_traceback()
        if ctx.cancelled:
            # Raising after a stop request is how a handler honours it.
            return stopped(task, ctx, now_fn(), message, tb)
        return failure(task, job, now_fn(), ErrorKind.ERROR, message, tb)
    return succeeded(job, value, now_fn)


def succeeded(job: Job, value: Any, now_fn: Any) -> Outcome:
    """Success with ``value`` as it will be stored, or — when no store can hold it — failure of
    this job alone, for good (running it again would return the same)."""
    if value is None:
        return RETURNED_NOTHING
    try:
        return Outcome.of(JobEvent.SUCCEED, result=storable(value))
    except NotStorable as exc:
        message = str(exc)
    except BaseException as exc:  # a result whose encoding runs user code that raises
        message = f"result not storable: {describe(exc)}"
    return Outcome.of(JobEvent.FAIL, error=JobError(job.attempt, now_fn(), ErrorKind.ERROR,
                                                    message))


def overran(task: Task, job: Job, now: datetime, ran: float, outcome: Outcome) -> Outcome:
    """The outcome of a handler that returned at last after it overran its timeout: a timeout,
    whatever it returned, retried per the task's policy."""
    ended = "returned" if outcome.error is None else outcome.error.message
    message = (f"timed out after {job.timeout or 0:g}s and ignored the request to stop; the "
               f"worker kept its lease until the handler stopped after {ran:.1f}s ({ended})")
    return failure(task, job, now, ErrorKind.TIMEOUT, message, None)


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
        return Outcome.of(JobEvent.RELEASE, error=error, retry_at=now)
    error = JobError(job.attempt, now, ErrorKind.CANCELLED, detail, tb)
    return Outcome.of(JobEvent.CANCEL, error=error)
