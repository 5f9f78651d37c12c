"""Queue controls as an app declares them: limits and retention that hold for the whole fleet.

::

    app.queue("billing", max_running=1, limit=(1, 30),
              retention=oncely.Retention(failed=oncely.Keep(count=100)))

    @app.task(queue="stripe", limit=(200, 1), concurrency_key="org:{org_id}", max_per_key=1)
    def meter(ctx, org_id: int) -> None: ...

* ``max_running=N`` — at most N jobs of the queue run at once, across every worker.
* ``limit=(n, window)`` — at most n job starts per window (seconds or a ``timedelta``: finite,
  above 0 and at most 100 years), on a queue or a task, across every worker; a sliding window
  (see :mod:`oncely.store.base`).
* ``concurrency_key`` / ``max_per_key`` (tasks) — at most ``max_per_key`` (default 1) running jobs
  of the task per value of the key template, formatted from the job's args when it is enqueued.
* ``retention`` — how many finished jobs of the queue to keep, and for how long, per final state
  (:class:`Retention`, :class:`Keep`); what a queue does not say comes from the settings.

Declaring changes nothing in the store by itself: a worker upserts its app's declarations when it
starts (like schedules; :mod:`oncely.controls`), so every worker claims under the same limits. A
task that declares no limits clears the ones an earlier version of it stored. Pausing is not
declared: it is a flag set with ``oncely queues pause`` and kept across declarations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from oncely.errors import ConfigError
from oncely.store.controls import ControlKind, ControlUpsert
from oncely.types import JobState
from oncely.validate import check_seconds

if TYPE_CHECKING:
    from oncely.config import Settings

RETAINED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Keep:
    """Keep finished jobs at most ``age`` (seconds or a ``timedelta``) and at most ``count`` of
    them (the newest); a job goes as soon as either says so. At least one must be given."""

    age: float | timedelta | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if self.age is None and self.count is None:
            raise ConfigError("Keep() needs an age, a count or both: retention is never unbounded")
        if self.age is not None:
            check_seconds("Keep(age=…)", self.age, zero=False)
        if self.count is not None and (not _whole(self.count) or self.count < 0):
            raise ConfigError(f"Keep(count=…) must be a whole number >= 0, got {self.count!r}")

    @property
    def age_seconds(self) -> float | None:
        return None if self.age is None else _seconds(self.age)

    def to_dict(self) -> dict[str, Any]:
        return {"age": self.age_seconds, "count": self.count}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Keep:
        return cls(age=data.get("age"), count=data.get("count"))


@dataclass(frozen=True)
class Retention:
    """Per final state, what to keep; a state left out keeps the settings' default."""

    succeeded: Keep | None = None
    failed: Keep | None = None
    cancelled: Keep | None = None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {str(state): keep.to_dict() for state in RETAINED_STATES
                if (keep := getattr(self, str(state))) is not None}


def default_retention(settings: Settings) -> dict[JobState, Keep]:
    """The settings' retention, for every queue that does not declare its own."""
    return {
        JobState.SUCCEEDED: Keep(settings.keep_succeeded_seconds, settings.keep_succeeded),
        JobState.FAILED: Keep(settings.keep_failed_seconds, settings.keep_failed),
        JobState.CANCELLED: Keep(settings.keep_cancelled_seconds, settings.keep_cancelled),
    }


def retention_for(stored: Mapping[str, Any], settings: Settings) -> dict[JobState, Keep]:
    """A queue's retention: what its control stored, the settings' default for the rest."""
    keep = default_retention(settings)
    for state in RETAINED_STATES:
        declared = stored.get(str(state))
        if isinstance(declared, Mapping):
            keep[state] = Keep.from_dict(declared)
    return keep


@dataclass(frozen=True)
class Rate:
    """At most ``count`` starts per ``window`` seconds."""

    count: int
    window: float

    @classmethod
    def parse(cls, owner: str, value: object) -> Rate | None:
        if value is None:
            return None
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise ConfigError(f"{owner}: limit must be (starts, window), e.g. limit=(1, 30) for "
                              f"at most 1 start per 30 s; got {value!r}")
        count, window = value
        if not _whole(count) or count < 1:
            raise ConfigError(f"{owner}: limit=({count!r}, …) must allow a whole number >= 1 of "
                              "starts per window (to stop a queue, pause it)")
        try:
            seconds = check_seconds("limit window", window, zero=False)
        except ConfigError as exc:
            raise ConfigError(f"{owner}: {exc}") from None
        return cls(int(count), seconds)

    def __str__(self) -> str:
        return f"{self.count}/{self.window:g}s"


def positive(owner: str, option: str, value: object, hint: str = "") -> int | None:
    """``value`` as a whole number >= 1, or None; ConfigError naming ``option`` otherwise."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{owner}: {option} must be a whole number >= 1, got {value!r}{hint}")
    return value


def hash_document(document: dict[str, Any]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class QueueSpec:
    name: str
    max_running: int | None = None
    limit: Rate | None = None
    retention: Retention = field(default_factory=Retention)

    @classmethod
    def create(cls, name: str, max_running: object = None, limit: object = None,
               retention: Retention | None = None) -> QueueSpec:
        owner = f"queue {name!r}"
        if retention is not None and not isinstance(retention, Retention):
            raise ConfigError(f"{owner}: retention must be oncely.Retention(...), "
                              f"got {retention!r}")
        running = positive(owner, "max_running", max_running, " (to stop a queue, pause it)")
        return cls(name, running, Rate.parse(owner, limit), retention or Retention())

    def upsert(self, now: datetime) -> ControlUpsert:
        document = {
            "max_running": self.max_running,
            "rate": None if self.limit is None else [self.limit.count, self.limit.window],
            "retention": self.retention.to_dict(),
        }
        return ControlUpsert(
            ControlKind.QUEUE, self.name, now, max_running=self.max_running,
            rate_limit=None if self.limit is None else self.limit.count,
            rate_window=None if self.limit is None else self.limit.window,
            retention=self.retention.to_dict(), spec_hash=hash_document(document),
        )
