"""One phase of the demo: a fleet of real workers through one simulated day, with its faults.

The demo process keeps the phase's clock (a :class:`~oncely.WarpClock` whose spec every worker
gets), the Stripe stub and the SMTP capture; its main thread launches the workers, plays the
phase's timeline (restarts, a SIGKILL, a SIGSTOP/SIGCONT) as small state machines polled every
few milliseconds, and at the end of the day runs the watchdog and the doctor against the phase's
store while the fleet is still up, then stops the fleet gracefully.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import oncely
from oncely_billing import THRESHOLDS_TASK
from oncely_billing.demo.fleet import Fleet, Member, holds_write_lock, pid_of
from oncely_billing.demo.plan import (
    DEMO_STRIPE_KEY,
    LEADER_TTL_REAL,
    PhaseConfig,
    Plan,
    watchdog_config,
)
from oncely_billing.demo.services import MailCapture, start_stripe, stripe_summary
from oncely_billing.meter import TASK_NAME as STRIPE_TASK

Progress = Callable[[float, str], None]  # (simulated hours done, label)
TICK = 0.01  # real seconds between polls of the timeline
GRACE = 3.0  # ONCELY_SHUTDOWN_GRACE given to the workers (real seconds)
READY_TIMEOUT = 120.0  # real seconds the fleet may take to import and warm up
SETTLE = timedelta(minutes=45)  # a fault's takeover must be over this long before the day ends


@dataclass(frozen=True)
class Note:
    at: str  # simulated time
    what: str


@dataclass
class PhaseRun:
    config: PhaseConfig
    url: str
    real_seconds: float = 0.0
    worker_starts: int = 0
    notes: list[Note] = field(default_factory=list)
    cut_workers: set[str] = field(default_factory=set)  # killed or frozen by the demo
    stripe: dict[str, Any] = field(default_factory=dict)
    mail: dict[str, Any] = field(default_factory=dict)
    watchdog: list[dict[str, Any]] = field(default_factory=list)  # the final run's findings
    doctor: dict[str, Any] = field(default_factory=dict)
    exit_codes: dict[int, int | None] = field(default_factory=dict)


class Driver:
    """What the timeline's actions act on."""

    def __init__(self, plan: Plan, run: PhaseRun, fleet: Fleet, clock: oncely.WarpClock) -> None:
        self.plan = plan
        self.run = run
        self.fleet = fleet
        self.clock = clock
        self.monitor = oncely.App(run.url, clock=clock)

    def note(self, what: str) -> None:
        self.run.notes.append(Note(self.clock.now().isoformat(timespec="seconds"), what))

    def running(self, task: str) -> list[oncely.Job]:
        return self.monitor.read.jobs(state=oncely.JobState.RUNNING, task=task, limit=20)

    def holder(self, tasks: tuple[str, ...]) -> tuple[oncely.Job, Member] | None:
        """A running job of one of ``tasks`` and the live worker running it."""
        for task in tasks:
            for job in self.running(task):
                pid = pid_of(job.lease_owner)
                member = self.fleet.by_pid(pid) if pid is not None else None
                if member is not None:
                    return job, member
        return None


class Restart:
    """Restart ``count`` workers (SIGTERM, then a new process) at ``at``: a deploy."""

    def __init__(self, at: datetime, count: int) -> None:
        self.at, self.count = at, count
        self.stopping: dict[int, float] = {}  # member number -> real time of SIGTERM
        self.done = False

    def poll(self, d: Driver) -> None:
        if not self.stopping:
            if d.clock.now() < self.at:
                return
            oldest = sorted(d.fleet.alive(), key=lambda m: m.launched)[: self.count]
            for member in oldest:
                d.fleet.send(member, signal.SIGTERM)
                self.stopping[member.number] = time.time()
            d.note(f"restart: SIGTERM to worker(s) {', '.join(f'#{m.number}' for m in oldest)}; "
                   "each replacement enqueues its start-up runs")
            return
        for member in d.fleet.members:
            sent = self.stopping.get(member.number)
            if sent is None:
                continue
            if member.alive and time.time() - sent > GRACE + 3:
                d.fleet.send(member, signal.SIGKILL)
            if not member.alive:
                del self.stopping[member.number]
                d.fleet.launch()
                d.run.worker_starts += 1
        self.done = not self.stopping


class Kill:
    """SIGKILL the worker running the free-tier job (any worker if none runs it in time). No
    replacement is started: the fleet carries on one worker short."""

    def __init__(self, at: datetime, give_up: datetime) -> None:
        self.at, self.give_up = at, give_up
        self.done = False

    def poll(self, d: Driver) -> None:
        now = d.clock.now()
        if now < self.at:
            return
        if d.plan.end - now < timedelta(seconds=d.run.config.lease_ttl) + SETTLE:
            d.note("no SIGKILL: too little of the day left to see the takeover")
            self.done = True
            return
        found = d.holder((THRESHOLDS_TASK,))
        if found is None and now < self.give_up:
            return
        if found is not None:
            job, member = found
            what = f"SIGKILL worker #{member.number} while it ran {job.task} job {job.id} " \
                   f"(attempt {job.attempt}, fence {job.fence})"
            d.run.cut_workers.add(job.lease_owner or "")
        else:
            member = d.fleet.alive()[0]
            what = f"SIGKILL worker #{member.number} (no free-tier run was in progress)"
        d.fleet.send(member, signal.SIGKILL)
        member.proc.wait()
        d.note(f"{what}; the fleet carries on with {len(d.fleet.alive())} workers")
        self.done = True


class Freeze:
    """SIGSTOP the worker running the Stripe job past its lease (a zombie), then SIGCONT.

    The freeze is undone at once and tried again a moment later if the frozen worker turns out
    to hold the store's write lock (see :mod:`.fleet`)."""

    def __init__(self, at: datetime, give_up: datetime, pause: float) -> None:
        self.at, self.give_up, self.pause = at, give_up, pause
        self.frozen: tuple[oncely.Job, Member, float] | None = None
        self.not_before = 0.0
        self.retries = 0
        self.done = False

    def poll(self, d: Driver) -> None:
        if self.frozen is not None:
            job, member, since = self.frozen
            if time.time() - since >= self.pause:
                d.fleet.send(member, signal.SIGCONT)
                d.note(f"SIGCONT worker #{member.number} after {self.pause:.1f} real s "
                       f"(~{self.pause * d.plan.speed / 60:.0f} simulated min): a zombie whose "
                       f"lease of job {job.id} expired meanwhile")
                self.done = True
            return
        now = d.clock.now()
        if now < self.at or time.time() < self.not_before:
            return
        if d.plan.end - now < timedelta(seconds=self.pause * d.plan.speed) + SETTLE:
            d.note("no SIGSTOP: too little of the day left to see the takeover")
            self.done = True
            return
        tasks = (STRIPE_TASK,) if now < self.give_up else (STRIPE_TASK, THRESHOLDS_TASK)
        found = d.holder(tasks)
        if found is None:
            return
        job, member = found
        d.fleet.send(member, signal.SIGSTOP)
        time.sleep(0.02)
        if holds_write_lock(d.run.url):
            d.fleet.send(member, signal.SIGCONT)
            self.retries += 1
            self.not_before = time.time() + 0.05
            return
        self.frozen = (job, member, time.time())
        d.run.cut_workers.add(job.lease_owner or "")
        d.note(f"SIGSTOP worker #{member.number} while it ran {job.task} job {job.id} "
               f"(attempt {job.attempt}, fence {job.fence})"
               + (f", after {self.retries} attempt(s) that found it in a write transaction"
                  if self.retries else ""))


def timeline(plan: Plan, config: PhaseConfig) -> list[Restart | Kill | Freeze]:
    actions: list[Restart | Kill | Freeze] = [
        Restart(plan.at(fraction), min(config.restart_count, plan.workers))
        for fraction in config.restarts
    ]
    if config.kill_at is not None:
        at = just_before(plan.at(config.kill_at), 35)  # the free-tier job's slot
        actions.append(Kill(at, at + timedelta(hours=2)))
    if config.freeze_at is not None:
        at = just_before(plan.at(config.freeze_at), 5)  # the Stripe job's slot
        pause = (config.lease_ttl + plan.sim(LEADER_TTL_REAL + 0.6)) / plan.speed
        actions.append(Freeze(at, at + timedelta(hours=3), pause))
    return actions


def just_before(after: datetime, minute: int) -> datetime:
    """A minute before the first ``HH:minute`` at or after ``after``: a fault then catches the
    run of that slot as it starts, leaving its takeover the whole hour."""
    slot = after.replace(minute=minute, second=0, microsecond=0)
    if slot < after:
        slot += timedelta(hours=1)
    return slot - timedelta(minutes=1)


def run_phase(plan: Plan, config: PhaseConfig, url: str, base_env: dict[str, str],
              mail: MailCapture, progress: Progress) -> PhaseRun:
    started = time.time()
    # The real origin is provisional until every worker is ready (see oncely_billing.demo.app).
    clock = oncely.WarpClock(plan.origin, plan.speed, real_origin=started + 3600.0)
    stub = start_stripe(clock)
    mail.reset()
    signals = plan.out / "run" / config.name
    shutil.rmtree(signals, ignore_errors=True)
    (signals / "ready").mkdir(parents=True)
    env = {**base_env, **config.engine_env(plan), "ONCELY_DATABASE_URL": url,
           "ONCELY_CLOCK": clock.to_spec(), "ONCELY_SIM_START_FILE": str(signals / "start"),
           "ONCELY_SIM_READY_DIR": str(signals / "ready"),
           "ONCELY_STRIPE_API_BASE": stub.url, "ONCELY_STRIPE_API_KEY": DEMO_STRIPE_KEY,
           "ONCELY_SHUTDOWN_GRACE": f"{GRACE:g}"}
    run = PhaseRun(config, url)
    fleet = Fleet(config.name, env, plan.out / "logs")
    driver = Driver(plan, run, fleet, clock)
    try:
        for _ in range(plan.workers):
            fleet.launch()
        run.worker_starts = plan.workers
        start_day(fleet, clock, signals, plan.workers, progress)
        actions = timeline(plan, config)
        total_hours = plan.sim_seconds / 3600
        while (now := clock.now()) < plan.end:
            for action in actions:
                if not action.done:
                    action.poll(driver)
            check_fleet(fleet, started)
            done = max(0.0, (now - plan.origin).total_seconds() / 3600)
            progress(min(done, total_hours), now.strftime("%H:%M") if done else "starting")
            time.sleep(TICK)
        progress(total_hours, "final checks")
        final_checks(plan, run)
    finally:
        run.exit_codes = fleet.stop_all(GRACE + 5)
        run.stripe = stripe_summary(stub)
        stub.stop()
        run.mail = mail.summary()
        driver.monitor.close()
    run.real_seconds = time.time() - started
    return run


def start_day(fleet: Fleet, clock: oncely.WarpClock, signals: Path, workers: int,
              progress: Progress) -> None:
    """Wait until every worker has warmed up, then start the simulated day for all of them."""
    began = time.time()
    while len(list((signals / "ready").iterdir())) < workers:
        check_fleet(fleet, began)
        if time.time() - began > READY_TIMEOUT:
            raise oncely.OncelyError(f"the demo's workers were not ready after {READY_TIMEOUT:g} s"
                                     f" (see {fleet.logs})")
        progress(0.0, "warming up")
        time.sleep(TICK)
    start = time.time() + 0.2
    clock.real_origin = start
    pending = signals / "start.tmp"
    pending.write_text(f"{start:.6f}\n")
    pending.rename(signals / "start")


def check_fleet(fleet: Fleet, started: float) -> None:
    """Fail fast when the fleet cannot start (a worker that exits at once, every time)."""
    if fleet.alive() or time.time() - started < 1.0:
        return
    last = fleet.members[-1]
    tail = last.log.read_text(errors="replace").strip().splitlines()[-3:]
    raise oncely.OncelyError(f"the demo's workers exited (see {last.log}): "
                             + (" | ".join(tail) or f"exit code {last.proc.returncode}"))


def final_checks(plan: Plan, run: PhaseRun) -> None:
    """The watchdog and the doctor against the phase's store at the end of the day, the fleet
    still up; the watchdog looks at the last hour and at the whole day."""
    settings = oncely.Settings.from_env(run.config.engine_env(plan))  # the fleet's lease etc.
    app = oncely.App(run.url, clock=oncely.FrozenClock(plan.end), settings=settings)
    config = watchdog_config(plan.sim(1.0), windows=(3600.0, plan.sim_seconds + 3600.0))
    try:
        result = app.run_watchdog(config)
        run.watchdog = [{"kind": str(f.kind), "summary": f.summary, "severity": f.severity,
                         "ratio": f.ratio, "advice": f.advice} for f in result.findings]
        report = app.doctor(config)
        run.doctor = {"healthy": report.healthy,
                      "findings": [asdict(f) for f in report.findings
                                   if f.severity in ("problem", "warning")]}
    finally:
        app.close()
