"""oncely: scheduled background jobs that run once per slot, never overlap, and recover by
themselves — on an embedded SQLite file or a shared PostgreSQL."""

from oncely.app import App
from oncely.clock import Clock, FrozenClock, SystemClock, WarpClock
from oncely.config import Settings
from oncely.errors import (
    ArgsMismatch,
    ArgsNotJSON,
    Cancel,
    ConfigError,
    FenceRejected,
    InvalidSchedule,
    InvalidURL,
    NotFound,
    OncelyError,
    SchemaMismatch,
    SingletonBusy,
    StoreError,
    StoreUnavailable,
    UnknownTask,
)
from oncely.observe.diagnose import WatchdogConfig
from oncely.queues import Keep, Retention
from oncely.retry import Retry, RetryPolicy
from oncely.schedules import ScheduleSpec
from oncely.tasks import JobHandle, Task
from oncely.types import Job, JobState, Overlap, SlotOutcome
from oncely.worker import JobContext, Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "ArgsMismatch",
    "ArgsNotJSON",
    "Cancel",
    "Clock",
    "ConfigError",
    "FenceRejected",
    "FrozenClock",
    "InvalidSchedule",
    "InvalidURL",
    "Job",
    "JobContext",
    "JobHandle",
    "JobState",
    "Keep",
    "NotFound",
    "OncelyError",
    "Overlap",
    "Retention",
    "Retry",
    "RetryPolicy",
    "ScheduleSpec",
    "SchemaMismatch",
    "Settings",
    "SingletonBusy",
    "SlotOutcome",
    "StoreError",
    "StoreUnavailable",
    "SystemClock",
    "Task",
    "UnknownTask",
    "WarpClock",
    "WatchdogConfig",
    "Worker",
    "__version__",
]
