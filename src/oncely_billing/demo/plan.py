"""The demo's options and everything derived from them: the simulated day, the warp speed, the
settings of each phase and its timeline of faults.

Time runs on a :class:`~oncely.WarpClock` shared by every process. Settings that oncely reads in
*clock* seconds (lease and leader TTLs, the maintenance and watchdog periods, timeouts) are sized
here from a length of *real* time times the speed, so they keep the same real-time margins at any
``--speed``; settings paced in real seconds (poll and enqueue intervals, shutdown grace) are given
as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import oncely
from oncely import WatchdogConfig

# The simulated day starts just after a :35 slot, on a fixed date: the same seed gives the same
# dataset and the same day, run after run.
ORIGIN = datetime(2026, 3, 10, 0, 40, tzinfo=UTC)
END_BEFORE = timedelta(minutes=10)  # the day ends at origin + hours - this: the last slots finish
DEFAULT_ORGS, QUICK_ORGS = 5_000, 1_000
DEFAULT_HOURS, QUICK_HOURS = 24.0, 5.0
DEFAULT_WORKERS = 4
BASE_SPEED = 1500.0  # simulated seconds per real second at 5,000 orgs: an hour every 2.4 s
QUICK_SPEED = 1200.0  # --quick (CI, often a busy machine): an hour every 3 s
STRIPE_CUSTOMERS = 100  # orgs that keep their Stripe customer id: the local stub keeps up
STRIPE_RATE = 1000.0  # client throttle in the demo (calls/s; the library's default is 200)
STRIPE_RATE_DEFAULT = 200.0
DEMO_STRIPE_KEY = "sk_test_oncely_demo_local_stub"  # the local stub wants a key, any key
SEED = 1

# Real seconds behind the clock-second settings, at 5,000 organizations (see Plan.sim).
GUARDED_LEASE_REAL = 0.9  # renewed every 0.3 s by the heartbeat
UNSAFE_LEASE_REAL = 0.15  # shorter than a run of the incident's free-tier job; never renewed
LEADER_TTL_REAL = 0.5  # a dead leader is replaced well before a dead worker's lease expires
MAINTENANCE_REAL = 0.5
WATCHDOG_REAL = 1.0
KEEP_SIM = 30 * 86400.0  # keep finished jobs for the analysis (simulated seconds)
INCIDENT_ATTEMPTS = 5  # the incident's queue: attempts 5, for failed and stalled jobs alike
HEAVY_FRACTION = 0.002  # organizations with 30k-400k units a month (the seed's default)
# The watchdog's noise floors, in real seconds (see watchdog_config).
SETTLE_REAL, STUCK_MIN_REAL, PRESSURE_MIN_REAL = 0.5, 3.0, 1.0


@dataclass(frozen=True)
class DemoOptions:
    """What the user asked for; None means "the default" (which ``quick`` changes)."""

    orgs: int | None = None
    workers: int | None = None
    hours: float | None = None
    speed: float | None = None
    store: str | None = None
    out: Path = Path("oncely-demo")
    quick: bool = False

    def plan(self) -> Plan:
        orgs = self.orgs or (QUICK_ORGS if self.quick else DEFAULT_ORGS)
        hours = self.hours or (QUICK_HOURS if self.quick else DEFAULT_HOURS)
        workers = self.workers or DEFAULT_WORKERS
        if orgs < 10:
            raise oncely.ConfigError("--orgs must be at least 10")
        if workers < 2:
            raise oncely.ConfigError("--workers must be at least 2: the guarded run kills one")
        if hours < 3:
            raise oncely.ConfigError("--hours must be at least 3 simulated hours")
        speed = self.speed or auto_speed(orgs, self.quick)
        if not 10 <= speed <= 20_000:
            raise oncely.ConfigError("--speed must be between 10 and 20000 simulated seconds "
                                     "per real second")
        store = self.store or ""
        if store and not store.startswith(("postgresql://", "postgres://", "sqlite:///")):
            raise oncely.ConfigError(f"--store {store!r}: use postgresql://… (a fresh schema is "
                                     "created per phase) or sqlite:///dir (a file per phase)")
        return Plan(orgs=orgs, workers=workers, hours=hours, speed=speed, store=store,
                    out=self.out.resolve(), quick=self.quick)


def watchdog_config(scale: float, windows: tuple[float, ...] = ()) -> WatchdogConfig:
    """The watchdog's thresholds for a fleet on a warp clock.

    Its noise floors — a slot counts as due ``settle_seconds`` after its time, a run is stuck
    only ``stuck_min_seconds`` past its usual duration, jobs are late after
    ``pressure_min_seconds`` — are meant for real time. At 2000x, 60 simulated seconds are 30 ms:
    a scheduling hiccup of the demo machine would read as a stuck job. So the demo sets them in
    real seconds times ``scale`` (the speed, times :attr:`Plan.load`), as it does the leases;
    the ratios are oncely's defaults."""
    return WatchdogConfig(windows=windows, settle_seconds=SETTLE_REAL * scale,
                          stuck_min_seconds=STUCK_MIN_REAL * scale,
                          pressure_min_seconds=PRESSURE_MIN_REAL * scale)


def scale_timeouts(app: oncely.App, speed: float) -> None:
    """Make every task's timeout count real seconds, not simulated ones.

    A timeout guards against a handler hung on the outside world (an SMTP server, the analytics
    store), which takes real time; at 2000x the notification task's 120 s would be 60 ms, and an
    email sent in 70 ms would time out, be retried and go out twice."""
    for task in app.tasks.values():
        if task.options.timeout is not None:
            task.options = replace(task.options, timeout=task.options.timeout * speed)


def auto_speed(orgs: int, quick: bool = False) -> float:
    """A speed at which one run of the free-tier job stays well inside its hour; ``--quick``
    (CI, often a busy machine) trades its shorter day for more real time per simulated hour."""
    base = QUICK_SPEED if quick else BASE_SPEED
    return float(base * min(1.0, DEFAULT_ORGS / orgs))


@dataclass(frozen=True)
class Plan:
    orgs: int
    workers: int
    hours: float
    speed: float
    store: str
    out: Path
    quick: bool
    origin: datetime = ORIGIN
    stripe_customers: int = STRIPE_CUSTOMERS
    seed: int = SEED

    @property
    def end(self) -> datetime:
        return self.origin + timedelta(hours=self.hours) - END_BEFORE

    @property
    def sim_seconds(self) -> float:
        return (self.end - self.origin).total_seconds()

    @property
    def real_seconds(self) -> float:
        """Real seconds one phase's simulated day takes."""
        return self.sim_seconds / self.speed

    @property
    def load(self) -> float:
        """How much longer than at 5,000 organizations one run takes (a store transaction of
        the free-tier job too): the real-time margins below grow with it."""
        return max(1.0, self.orgs / DEFAULT_ORGS)

    def sim(self, real_seconds: float) -> float:
        """Simulated seconds for a margin of ``real_seconds`` at 5,000 organizations."""
        return real_seconds * self.load * self.speed

    def at(self, fraction: float) -> datetime:
        return self.origin + timedelta(seconds=self.sim_seconds * fraction)

    @property
    def usage_end(self) -> datetime:
        """The dataset's events run up to here (the end of the simulated day, and an hour)."""
        return self.origin + timedelta(hours=math.ceil(self.hours) + 1)


@dataclass(frozen=True)
class PhaseConfig:
    """One phase: its mode, the engine settings its workers get, and its faults."""

    name: str  # "unsafe" | "guarded"
    title: str
    heartbeat: bool
    lease_ttl: float  # clock seconds
    restarts: tuple[float, ...] = ()  # fractions of the day at which workers are restarted
    restart_count: int = 2  # workers restarted each time
    kill_at: float | None = None  # fraction of the day: SIGKILL the free-tier job's worker
    freeze_at: float | None = None  # fraction: SIGSTOP the Stripe job's worker past its lease
    max_rescues: int | None = None  # runs of one job handed over before it fails (None: default)
    concurrency: int | None = None  # handler threads per worker, none prefetched (None: default)
    notes: list[str] = field(default_factory=list)

    def engine_env(self, plan: Plan) -> dict[str, str]:
        own: dict[str, str] = {}
        if self.max_rescues is not None:
            own["ONCELY_MAX_RESCUES"] = str(self.max_rescues)
        if self.concurrency is not None:
            own.update(ONCELY_CONCURRENCY=str(self.concurrency), ONCELY_PREFETCH="0")
        return {
            **own,
            "ONCELY_SIM_MODE": self.name,
            "ONCELY_SIM_SCALE": f"{plan.sim(1.0):g}",
            "ONCELY_LEASE_TTL": f"{self.lease_ttl:g}",
            "ONCELY_LEADER_TTL": f"{plan.sim(LEADER_TTL_REAL):g}",
            "ONCELY_MAINTENANCE_INTERVAL": f"{plan.sim(MAINTENANCE_REAL):g}",
            "ONCELY_WATCHDOG_INTERVAL": f"{plan.sim(WATCHDOG_REAL):g}",
            "ONCELY_POLL_INTERVAL": "0.1",
            "ONCELY_ENQUEUE_INTERVAL": "0.05",
            "ONCELY_SHUTDOWN_GRACE": "3",
            "ONCELY_KEEP_SUCCEEDED_SECONDS": f"{KEEP_SIM:g}",
            "ONCELY_KEEP_FAILED_SECONDS": f"{KEEP_SIM:g}",
            "ONCELY_METERING_ENFORCE": "1",
            "ONCELY_STRIPE_RATE": f"{STRIPE_RATE:g}",
            "ONCELY_STRIPE_CONCURRENCY": "8",
            "ONCELY_STRIPE_RECONCILE_CRON": "off",  # the day replays the incident's two jobs
        }

    def describe(self, plan: Plan) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "heartbeat": self.heartbeat,
            "lease_ttl_sim_seconds": self.lease_ttl,
            "lease_ttl_real_seconds": round(self.lease_ttl / plan.speed, 3),
            "heartbeat_every_sim_seconds": round(self.lease_ttl / 3, 1) if self.heartbeat
            else None,
            "restarts_at": [plan.at(f).isoformat() for f in self.restarts],
            "workers_restarted_each_time": self.restart_count if self.restarts else 0,
            "kill_after": plan.at(self.kill_at).isoformat() if self.kill_at is not None
            else None,
            "freeze_after": plan.at(self.freeze_at).isoformat() if self.freeze_at is not None
            else None,
            "max_rescues": self.max_rescues, "concurrency": self.concurrency,
            "notes": list(self.notes),
        }


def phases(plan: Plan) -> tuple[PhaseConfig, PhaseConfig]:
    unsafe = PhaseConfig(
        "unsafe", "unsafe replay (incident config)", heartbeat=False,
        lease_ttl=max(1.0, plan.sim(UNSAFE_LEASE_REAL)), restarts=(0.25, 0.5, 0.75),
        max_rescues=INCIDENT_ATTEMPTS - 1, concurrency=1,
        notes=["the free-tier job as the incident's system had it "
               "(oncely_billing.demo.incident_job): a full recount and every organization row "
               "rewritten each run, the email sent before the state is committed, no outbox, "
               "no fence",
               "every worker enqueues an immediate run of both jobs when it starts "
               "(task.enqueue(), no unique key)",
               "overlap 'allow', no singleton: runs of the same job may run side by side",
               "concurrency 1 per worker process (nothing prefetched)",
               f"{INCIDENT_ATTEMPTS} attempts, exponential backoff from 5 s; a stalled job is "
               f"handed over up to {INCIDENT_ATTEMPTS - 1} times too",
               f"lease {plan.sim(UNSAFE_LEASE_REAL) / 60:.0f} simulated min, shorter than a run "
               "of the free-tier job, and no heartbeat: never renewed, no self-fencing",
               "workers restarted (graceful) at 25%, 50% and 75% of the day, two at a time"],
    )
    guarded = PhaseConfig(
        "guarded", "guarded run (oncely defaults)", heartbeat=True,
        lease_ttl=plan.sim(GUARDED_LEASE_REAL), kill_at=0.25, freeze_at=0.5,
        notes=["oncely's free-tier job (oncely_billing.thresholds): the rollup, only changed "
               "organizations written, the outbox, fenced writes",
               "every worker calls app.trigger() for both schedules when it starts",
               "overlap 'skip', singleton, the jobs' own retry policies",
               f"lease {plan.sim(GUARDED_LEASE_REAL) / 60:.0f} simulated min, renewed by the "
               "heartbeat every third of it; self-fencing on",
               "SIGKILL of the worker running the free-tier job (no replacement)",
               "SIGSTOP of the worker running the Stripe job, past its lease, then SIGCONT",
               "both phases: leases, leader TTL, the watchdog's noise floors and the tasks' "
               "timeouts are sized in real seconds for the warp clock (oncely_billing.demo.plan)"],
    )
    return unsafe, guarded
