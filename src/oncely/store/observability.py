"""The rows of the store's observability section: executions, fleet events and anomalies.

What the database records about runs, beyond the job rows themselves (migration 0002):

* **Executions** — one row per attempt a worker started, written by the database itself (a trigger
  on the job's move into ``running``, another on its move out), so every claim path and every
  driver records them the same way. They outlive pruned jobs: the watchdog counts them against
  the schedule's expected count.
* **Fleet events** — notable things that must be counted fleet-wide, not per process:
  ``lease.taken_over`` (a key lease granted while its previous holder's lease had expired without
  being released; written by a trigger) and ``fence.rejected`` (written by the worker whose write
  was refused).
* **Anomalies** — what the watchdog raised. At most one *open* anomaly per ``(kind, subject)``:
  raising it again updates it (``occurrences`` grows); resolving it closes it, and a later raise
  opens a new one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

LEASE_TAKEN_OVER = "lease.taken_over"
FENCE_REJECTED = "fence.rejected"


@dataclass(frozen=True)
class Execution:
    """One started attempt of a job. ``ended_at``/``outcome`` stay None while it runs."""

    id: int
    job_id: int
    task: str
    queue: str
    schedule: str | None
    slot: datetime | None
    attempt: int
    fence: int
    worker_id: str | None
    run_at: datetime  # when the job became due: started_at - run_at is its wait
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str | None = None  # the job state it left running for; "released" when refunded
    error_kind: str | None = None  # the kind of the error that attempt appended, if any


@dataclass(frozen=True)
class ExecutionWindow:
    """Executions started in ``(since, until]``, optionally of one task, optionally counted per
    bucket of ``bucket_seconds`` (bucket ``i`` is ``[since + i * b, since + (i + 1) * b)``)."""

    since: datetime
    until: datetime
    task: str | None = None
    bucket_seconds: float | None = None


@dataclass(frozen=True)
class ExecutionCount:
    task: str
    queue: str
    schedule: str | None  # None: jobs not tied to a slot (immediate or ad-hoc enqueues)
    bucket: int | None
    executions: int
    retries: int  # executions with attempt > 1
    jobs: int  # distinct jobs
    workers: int  # distinct workers that ran them
    failures: int  # executions that ended retryable or failed (released ones excluded)
    wait_seconds: float  # total of started_at - run_at
    lost: int = 0  # executions given back (outcome released): rescued or handed back unstarted


@dataclass(frozen=True)
class LedgerCount:
    schedule: str
    outcome: str  # a SlotOutcome value
    count: int
    first_slot: datetime
    last_slot: datetime


@dataclass(frozen=True)
class WaitingGroup:
    """Due jobs (run_at <= now) that wait in scheduled/available/retryable, per queue and task."""

    queue: str
    task: str
    count: int
    oldest_run_at: datetime


@dataclass(frozen=True)
class FleetEventInsert:
    name: str
    at: datetime
    job_id: int | None = None
    task: str | None = None
    subject: str | None = None  # a lease key, a worker id …
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetEvent:
    id: int
    name: str
    at: datetime
    job_id: int | None
    task: str | None
    subject: str | None
    detail: dict[str, Any]


class AnomalyKind(enum.StrEnum):
    TOO_MANY = "too_many"  # more executions than the schedule allows
    TOO_FEW = "too_few"  # slots that did not run: missed, coalesced, skipped, never recorded
    STUCK = "stuck"  # a lease renewed far past the task's usual duration
    PRESSURE = "pressure"  # jobs waiting longer than their schedule's period


@dataclass(frozen=True)
class AnomalyRaise:
    kind: AnomalyKind
    subject: str  # "schedule:<name>" or "job:<id>"
    summary: str
    now: datetime
    severity: str = "warning"  # "warning" | "critical"
    schedule: str | None = None
    ratio: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    advice: str = ""


@dataclass(frozen=True)
class Anomaly:
    id: int
    kind: AnomalyKind
    subject: str
    severity: str
    summary: str
    schedule: str | None
    ratio: float | None
    evidence: dict[str, Any]
    advice: str
    first_seen_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    occurrences: int

    @property
    def open(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True)
class AnomalyRaiseResult:
    anomaly: Anomaly
    created: bool  # False: an open anomaly of that kind and subject was updated
