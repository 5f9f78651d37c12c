"""The one exception root of oncely and everything under it.

::

    OncelyError                      every error raised by oncely
    ├── ConfigError                  a setting or argument is invalid (exit code 2)
    │   ├── InvalidURL               a database URL oncely cannot use
    │   ├── InvalidSchedule          a cron expression, interval, time zone or policy is wrong
    │   ├── UnknownTask              no task is registered under that name
    │   ├── ArgsNotJSON              job arguments cannot be stored as JSON
    │   └── ArgsMismatch             job arguments do not fit the task's handler
    ├── StoreError                   the storage backend failed (exit code 3)
    │   ├── StoreUnavailable         the database cannot be reached or opened
    │   ├── SchemaMismatch           the schema is older or newer than this code (exit code 4)
    │   └── StoreBusy                contention outlasted the store's retries
    ├── NotFound                     a job, schedule or queue does not exist (exit code 5)
    ├── FenceRejected                a write was refused: the caller no longer holds the lease
    ├── SingletonBusy                ``app.run_now`` refused: the task's singleton lease is held
    └── HandlerSignal                raised by handler code to steer its own job
        ├── Retry                    retry this job (optionally after ``delay`` seconds)
        └── Cancel                   stop this job for good, recorded as cancelled

The retry *policy* is not an error: it is :class:`oncely.RetryPolicy` (:mod:`oncely.retry`),
passed to ``@app.task(retry=…)``. ``oncely.Retry`` called with policy arguments still returns one,
with a ``DeprecationWarning``.

Each error carries ``exit_code`` so the command line maps it to a documented exit status and
prints ``str(error)`` as one line.
"""

from __future__ import annotations


class OncelyError(Exception):
    """Root of every error oncely raises."""

    exit_code = 1


class ConfigError(OncelyError):
    """A setting, argument or definition is invalid; the message says what to fix."""

    exit_code = 2


class InvalidURL(ConfigError):
    """The database URL is malformed or names an unsupported scheme."""


class InvalidSchedule(ConfigError):
    """A schedule definition (cron, interval, time zone, policy) is invalid."""


class UnknownTask(ConfigError):
    """No task is registered under the requested name."""


class ArgsNotJSON(ConfigError):
    """Job arguments cannot be serialised as JSON."""


class ArgsMismatch(ConfigError):
    """Job arguments do not fit the task's handler: one it does not take, or one it needs
    missing (a job with them could only fail)."""


class StoreError(OncelyError):
    """The storage backend failed."""

    exit_code = 3


class StoreUnavailable(StoreError):
    """The database cannot be reached or opened."""


class SchemaMismatch(StoreError):
    """The database schema is behind or ahead of this version of oncely."""

    exit_code = 4


class StoreBusy(StoreError):
    """Lock contention lasted longer than the store's retry budget."""


class NotFound(OncelyError):
    """A job, schedule or queue does not exist."""

    exit_code = 5


class FenceRejected(OncelyError):
    """A fenced write was refused because the caller's fence is no longer current.

    Raised to a handler whose lease was taken over (or expired) when it tries to write through
    ``ctx.fenced()``; the worker then abandons the job without completing it.
    """

    def __init__(self, job_id: int, fence: int, message: str = "") -> None:
        self.job_id = job_id
        self.fence = fence
        super().__init__(message or f"job {job_id}: fence {fence} is no longer current")


class SingletonBusy(OncelyError):
    """``app.run_now`` did not run the task: another run holds its singleton lease (or a queue
    control held it back). Nothing was left queued; try again when that run has finished."""


class HandlerSignal(OncelyError):
    """Base of the exceptions a handler raises on purpose to steer its job."""


class Cancel(HandlerSignal):
    """Raised by a handler to stop its job for good; the job ends ``cancelled``."""

    def __init__(self, reason: str = "cancelled by handler") -> None:
        self.reason = reason
        super().__init__(reason)
