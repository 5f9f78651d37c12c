"""Expected versus observed: the checks behind the watchdog, ``oncely doctor`` and the dashboard.

For every schedule the number of executions a window should hold follows from its definition
(:func:`oncely.schedules.expected_count`); the store records every attempt a worker started
(``oncely_executions``; on PostgreSQL the view ``oncely_attempts``, which adds each job's latest
attempt, recorded on its row) and every slot's outcome (the ledger). Four checks compare them:

* **too many** — attempts of the schedule's task started in a window (slot runs, their retries,
  and runs of the same task not tied to a slot, e.g. an immediate enqueue at worker start-up)
  against the slots the window holds. Raised when ``observed >= allowed * too_many_ratio`` and
  ``observed - allowed >= min_excess`` (``allowed`` is the expected count, at least 1), so one
  retry or a run straddling the window's edge is not an alarm. Windows: one hour (or one period
  if longer) and ten periods, unless configured; the worst ratio is reported with its evidence.
* **too few** — slots due in the longest window (older than ``settle_seconds``, so a slot about
  to run is not counted) that did not run: never recorded (no enqueuer: a stopped scheduler),
  ``missed``, ``coalesced`` or ``skipped_overlap`` in the ledger.
* **stuck** — a running job whose lease is still being renewed, running longer than
  ``stuck_factor`` times its task's usual (median) duration and at least ``stuck_min_seconds``
  more than it; or running more than ``OVERRUN_SLACK`` seconds past its task's timeout: its
  handler ignored the request to stop, and its worker keeps the job (and its singleton key) until
  the code returns — a wedged handler that no timeout can free.
* **pressure** — due jobs of a schedule's task waiting longer than the schedule's period.

Every function reads the store through its typed methods and returns :class:`Finding` objects;
the watchdog stores them as anomalies, the doctor prints them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from oncely.errors import InvalidSchedule
from oncely.observe.fmt import plural, span, window_phrase
from oncely.schedules import ScheduleSpec, expected_count, period_hint
from oncely.store.base import JobFilter, ScheduleRow, Store
from oncely.store.observability import AnomalyKind, AnomalyRaise, ExecutionWindow
from oncely.types import Job, JobState, SlotOutcome

HOUR = 3600.0
# Past its timeout a handler gets a grace of at most 2 s to stop, then the worker reports it as
# overrunning; a job running this long past its timeout is wedged, not slow to stop.
OVERRUN_SLACK = 10.0
MAX_WINDOW = 7 * 86400.0


@dataclass(frozen=True)
class WatchdogConfig:
    windows: tuple[float, ...] = ()  # seconds; empty: one hour (or a period) and ten periods
    too_many_ratio: float = 1.5
    min_excess: int = 2
    settle_seconds: float = 60.0
    stuck_factor: float = 5.0
    stuck_min_seconds: float = 60.0
    min_duration_samples: int = 3
    pressure_factor: float = 1.0
    pressure_min_seconds: float = 30.0

    def __post_init__(self) -> None:
        # Written so that NaN fails every check (no comparison with NaN holds).
        ratios = (self.too_many_ratio, self.stuck_factor)
        if not all(1 < r < math.inf for r in ratios) or not self.min_excess >= 1:
            raise ValueError("too_many_ratio and stuck_factor must exceed 1 (and be finite), "
                             "min_excess be >= 1")
        if not all(0 < w < math.inf for w in self.windows):
            raise ValueError("watchdog windows must be positive, finite numbers of seconds")
        for name in ("settle_seconds", "stuck_min_seconds", "pressure_min_seconds",
                     "pressure_factor"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"WatchdogConfig({name}=…) must be a finite number >= 0, "
                                 f"got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Finding:
    kind: AnomalyKind
    subject: str
    summary: str
    severity: str = "warning"
    schedule: str | None = None
    ratio: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    advice: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.kind), self.subject)

    def to_raise(self, now: datetime) -> AnomalyRaise:
        return AnomalyRaise(self.kind, self.subject, self.summary, now, self.severity,
                            self.schedule, self.ratio, self.evidence, self.advice)


@dataclass(frozen=True)
class Rate:
    """Executions of one schedule's task in ``(since, until]`` against its slots."""

    schedule: str
    task: str
    window: float
    since: datetime
    until: datetime
    expected: int
    slot_runs: int  # first attempts of the schedule's slot jobs
    retries: int  # later attempts (slot jobs and others)
    non_slot: int  # first attempts of the task's jobs not tied to a slot
    non_slot_workers: int
    overlaps: int
    # Attempts given back (refunded): rescued because their worker died, froze past its lease
    # or lost it (a frozen one's late writes refused by its fence), or handed back unstarted by
    # their worker (a prefetched job no thread began, a release at shutdown). Each is one run of
    # its job together with the re-run, so it is counted once.
    lost: int = 0

    @property
    def observed(self) -> int:
        return max(0, self.slot_runs + self.retries + self.non_slot - self.lost)

    @property
    def ratio(self) -> float:
        return self.observed / max(self.expected, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_seconds": self.window, "since": self.since.isoformat(),
            "expected": self.expected, "observed": self.observed, "slot_runs": self.slot_runs,
            "retries": self.retries, "non_slot": self.non_slot,
            "non_slot_workers": self.non_slot_workers, "overlaps": self.overlaps,
            "lost": self.lost, "ratio": round(self.ratio, 3),
        }


def declared_specs(store: Store) -> list[tuple[ScheduleRow, ScheduleSpec]]:
    """Every stored schedule with its parsed definition (invalid ones are left out: nothing is
    expected of them; the doctor reports them on their own)."""
    specs = []
    for row in store.schedule_list():
        try:
            specs.append((row, ScheduleSpec.from_spec_dict(row.spec)))
        except InvalidSchedule:
            continue
    return specs


def paused_slots(store: Store, schedule: str, since: datetime, until: datetime) -> int:
    """Slots recorded ``paused`` in ``(since, until]``: the watchdog expects nothing for them."""
    return sum(c.count for c in store.ledger_counts(since, until, schedule)
               if c.outcome == str(SlotOutcome.PAUSED))


def windows_for(spec: ScheduleSpec, config: WatchdogConfig) -> list[float]:
    if config.windows:
        return sorted(set(config.windows))
    period = period_hint(spec)
    short = max(HOUR, period)
    return sorted({min(short, MAX_WINDOW), min(max(10 * period, HOUR), MAX_WINDOW)})


def rate(store: Store, row: ScheduleRow, spec: ScheduleSpec, now: datetime, window: float) -> Rate:
    since = now - timedelta(seconds=window)
    counted_from = max(since, row.created_at)
    expected = expected_count(spec, counted_from, now) if spec.enabled else 0
    expected = max(0, expected - paused_slots(store, spec.name, counted_from, now))
    slot_runs = retries = non_slot = workers = lost = 0
    for count in store.execution_counts(ExecutionWindow(since, now, task=spec.task)):
        if count.schedule == spec.name:
            slot_runs += count.executions - count.retries
            lost += count.lost
        elif count.schedule is None:
            non_slot += count.executions - count.retries
            workers += count.workers
        else:
            continue  # another schedule that runs the same task
        retries += count.retries
    overlaps = store.execution_overlaps(spec.task, since, now)
    return Rate(spec.name, spec.task, window, since, now, expected, slot_runs, retries, non_slot,
                workers, overlaps, lost)


def check_rate(
    store: Store, row: ScheduleRow, spec: ScheduleSpec, now: datetime, config: WatchdogConfig
) -> Finding | None:
    worst: Rate | None = None
    for window in windows_for(spec, config):
        found = rate(store, row, spec, now, window)
        allowed = max(found.expected, 1)
        excessive = (found.observed >= allowed * config.too_many_ratio
                     and found.observed - allowed >= config.min_excess)
        if excessive and (worst is None or found.ratio > worst.ratio):
            worst = found
    if worst is None:
        return None
    summary = (f"schedule {spec.name}: {worst.ratio:.1f}x expected in "
               f"{window_phrase(worst.window)} ({plural(worst.observed, 'execution')}, "
               f"{worst.expected} expected)")
    return Finding(
        AnomalyKind.TOO_MANY, f"schedule:{spec.name}", summary,
        severity="critical" if worst.ratio >= 5 else "warning", schedule=spec.name,
        ratio=round(worst.ratio, 3), evidence=worst.to_dict(), advice=_too_many_advice(worst),
    )


def _too_many_advice(found: Rate) -> str:
    parts = []
    if found.non_slot:
        by = f" by {plural(found.non_slot_workers, 'worker')}" if found.non_slot_workers else ""
        parts.append(
            f"{found.non_slot} came from enqueues of {found.task} not tied to a slot{by} "
            f"(immediate runs, e.g. at worker start-up): use app.trigger({found.schedule!r}) "
            "or a unique_key so the fleet runs a slot once, and let catch_up decide what a late "
            "fleet runs")
    if found.retries:
        parts.append(f"{found.retries} were retries: look at the failures "
                     f"(oncely jobs list --task {found.task} --state failed) and the retry policy")
    if found.overlaps:
        parts.append(f"{found.overlaps} started while another run was still running: keep the "
                     "task singleton (the default for scheduled tasks) with overlap='skip'")
    if not parts:
        parts.append("compare the ledger (oncely ledger) with the executions")
    return "; ".join(parts)


def check_slots(
    store: Store, row: ScheduleRow, spec: ScheduleSpec, now: datetime, config: WatchdogConfig
) -> Finding | None:
    if not spec.enabled:
        return None
    window = windows_for(spec, config)[-1]
    settle = max(config.settle_seconds, spec.effective_misfire_grace + spec.jitter)
    until = now - timedelta(seconds=settle)
    since = max(now - timedelta(seconds=window), row.created_at)
    if until <= since:
        return None
    outcomes = {c.outcome: c.count for c in store.ledger_counts(since, until, spec.name)}
    # Slots of a paused schedule: recorded paused, or not yet recorded while it is paused.
    expected = expected_count(spec, since, until) - outcomes.pop(str(SlotOutcome.PAUSED), 0)
    if row.paused_at is not None and row.paused_at < until:
        expected -= expected_count(spec, max(since, row.paused_at, row.cursor or since), until)
    if expected <= 0:
        return None
    ran = sum(outcomes.get(str(o), 0)
              for o in (SlotOutcome.RAN, SlotOutcome.FAILED, SlotOutcome.ENQUEUED))
    if ran >= expected:
        return None
    missing = max(0, expected - sum(outcomes.values()))
    lost = {o: outcomes.get(str(o), 0) for o in
            (SlotOutcome.MISSED, SlotOutcome.COALESCED, SlotOutcome.SKIPPED_OVERLAP)}
    evidence: dict[str, Any] = {
        "window_seconds": window, "since": since.isoformat(), "until": until.isoformat(),
        "expected": expected, "ran": ran, "never_recorded": missing,
        **{str(outcome): count for outcome, count in lost.items()},
        "cursor": row.cursor.isoformat() if row.cursor else None,
    }
    summary = (f"schedule {spec.name}: {ran} of {plural(expected, 'slot')} ran in "
               f"{window_phrase(window)}")
    return Finding(
        AnomalyKind.TOO_FEW, f"schedule:{spec.name}", summary,
        severity="critical" if missing else "warning", schedule=spec.name,
        ratio=round(ran / expected, 3), evidence=evidence,
        advice=_too_few_advice(spec, row, missing, lost),
    )


def _too_few_advice(
    spec: ScheduleSpec, row: ScheduleRow, missing: int, lost: dict[SlotOutcome, int]
) -> str:
    parts = []
    if missing:
        last = row.cursor.isoformat() if row.cursor else "never"
        parts.append(f"{missing} never recorded (last slot dealt with: {last}): the scheduler "
                     "stopped; start a worker whose app declares this schedule")
    if lost[SlotOutcome.MISSED] or lost[SlotOutcome.COALESCED]:
        count = lost[SlotOutcome.MISSED] + lost[SlotOutcome.COALESCED]
        parts.append(f"{count} missed or coalesced: no worker was up within misfire_grace "
                     f"(catch_up={spec.catch_up!r} decides what runs after an outage)")
    if lost[SlotOutcome.SKIPPED_OVERLAP]:
        parts.append(f"{lost[SlotOutcome.SKIPPED_OVERLAP]} skipped because the previous run "
                     "still held the lease: make the run shorter than the period or use "
                     "overlap='buffer_one'")
    return "; ".join(parts)


def check_stuck(store: Store, now: datetime, config: WatchdogConfig) -> list[Finding]:
    findings = []
    usual: dict[str, float | None] = {}
    for job in store.job_list(JobFilter(state=JobState.RUNNING, limit=1000)):
        if job.started_at is None or job.lease_expires_at is None or job.lease_expires_at <= now:
            continue  # an expired lease is the rescuer's business, not a stuck run
        elapsed = (now - job.started_at).total_seconds()
        if job.timeout is not None and elapsed > job.timeout + OVERRUN_SLACK:
            findings.append(_overrun(job, elapsed))
            continue
        if job.task not in usual:
            samples = store.execution_durations(job.task, 50)
            enough = len(samples) >= config.min_duration_samples
            usual[job.task] = statistics.median(samples) if enough else None
        typical = usual[job.task]
        if typical is None:
            continue
        if elapsed <= max(typical * config.stuck_factor, typical + config.stuck_min_seconds):
            continue
        times = elapsed / max(typical, 0.001)
        findings.append(Finding(
            AnomalyKind.STUCK, f"job:{job.id}",
            f"job {job.id} ({job.task}) has been running {span(elapsed)}, {times:.0f}x its "
            f"usual {span(typical)}; worker {job.lease_owner} still renews its lease",
            severity="warning", schedule=job.schedule, ratio=round(times, 3),
            evidence={"job_id": job.id, "task": job.task, "started_at": job.started_at.isoformat(),
                      "running_seconds": elapsed, "usual_seconds": typical,
                      "worker": job.lease_owner, "fence": job.fence,
                      "lease_expires_at": job.lease_expires_at.isoformat()},
            advice=(f"if the handler hangs, cancel it (oncely jobs cancel {job.id}) and give "
                    "the task a timeout; a long job should checkpoint so a retry resumes"),
        ))
    return findings


def _overrun(job: Job, elapsed: float) -> Finding:
    timeout = job.timeout or 0.0
    return Finding(
        AnomalyKind.STUCK, f"job:{job.id}",
        f"job {job.id} ({job.task}) has run {span(elapsed - timeout)} past its timeout of "
        f"{span(timeout)}: its handler ignores the request to stop, and worker {job.lease_owner} "
        "keeps the job (and its singleton key) until the code returns",
        severity="warning", schedule=job.schedule, ratio=round(elapsed / max(timeout, 0.001), 3),
        evidence={"job_id": job.id, "task": job.task, "started_at": job.started_at.isoformat()
                  if job.started_at else None, "running_seconds": elapsed,
                  "timeout_seconds": timeout, "worker": job.lease_owner, "fence": job.fence},
        advice=("declare the task with isolation=\"process\" so the worker can kill it at its "
                f"timeout, or restart worker {job.lease_owner} (the job is then retried)"),
    )


def check_pressure(
    store: Store, specs: Iterable[tuple[ScheduleRow, ScheduleSpec]], now: datetime,
    config: WatchdogConfig, live_queues: set[str] | None = None,
) -> list[Finding]:
    waiting = store.job_waiting(now)
    findings = []
    for _row, spec in specs:
        groups = [g for g in waiting if g.task == spec.task]
        if not spec.enabled or not groups:
            continue
        period = period_hint(spec)
        oldest = min(g.oldest_run_at for g in groups)
        age = (now - oldest).total_seconds()
        if age <= max(period * config.pressure_factor, config.pressure_min_seconds):
            continue
        count = sum(g.count for g in groups)
        queues = sorted({g.queue for g in groups})
        unserved = [q for q in queues if live_queues is not None and q not in live_queues
                    and "*" not in live_queues]
        advice = (f"no live worker serves queue {', '.join(unserved)}: start one"
                  if unserved else
                  "workers are not keeping up: add workers or concurrency, or look for a "
                  "long run holding the task's singleton lease (oncely leases)")
        findings.append(Finding(
            AnomalyKind.PRESSURE, f"schedule:{spec.name}",
            f"schedule {spec.name}: {plural(count, 'job')} of {spec.task} waiting, the oldest "
            f"for {span(age)}, longer than the period ({span(period)})",
            severity="warning", schedule=spec.name, ratio=round(age / period, 3),
            evidence={"waiting": count, "oldest_run_at": oldest.isoformat(),
                      "waited_seconds": age, "period_seconds": period, "queues": queues},
            advice=advice,
        ))
    return findings


def live_worker_queues(store: Store, now: datetime, stale_after: float) -> set[str]:
    """Queues served by workers seen within ``stale_after`` seconds; ``*`` for all queues."""
    served: set[str] = set()
    for worker in store.worker_list():
        if (now - worker.last_seen_at).total_seconds() <= stale_after:
            served.update(worker.queues or ("*",))
    return served


def evaluate(
    store: Store, now: datetime, config: WatchdogConfig | None = None,
    stale_after: float = 90.0,
) -> list[Finding]:
    """Every check for every schedule and running job, in a stable order."""
    config = config or WatchdogConfig()
    specs = declared_specs(store)
    findings: list[Finding] = []
    for row, spec in specs:
        for check in (check_rate, check_slots):
            found = check(store, row, spec, now, config)
            if found is not None:
                findings.append(found)
    findings += check_pressure(store, specs, now, config,
                               live_worker_queues(store, now, stale_after))
    findings += check_stuck(store, now, config)
    return findings
