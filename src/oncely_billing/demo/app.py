"""The billing app every worker process of ``oncely demo`` runs.

    python -m oncely --app oncely_billing.demo.app:app worker

It is :func:`oncely_billing.build_app` (the free-tier threshold job at :35 and its notification
task) plus the Stripe usage metering job at :05, configured entirely by the environment that
``oncely demo`` gives each worker:

=============================  ==================================================================
``ONCELY_DATABASE_URL``        the phase's store
``ONCELY_CLOCK``               ``warp:ORIGIN:SPEED:REAL_ORIGIN``: one simulated clock for every
                               process of the fleet
``ONCELY_METERING_USAGE_URL``  the DuckDB usage dataset
``ONCELY_STRIPE_API_BASE``     the local Stripe stub (``ONCELY_STRIPE_API_KEY``, ``_RATE`` too)
``ONCELY_SMTP_HOST/PORT``      the local SMTP server that captures the emails
``ONCELY_SIM_MODE``            ``guarded`` (oncely's defaults) or ``unsafe`` (the incident's)
``ONCELY_SIM_START_FILE``      where the demo writes the real instant the simulated day starts
``ONCELY_SIM_READY_DIR``       where a worker says it is ready (a file named after its pid)
=============================  ==================================================================

The fleet starts together whatever the machine's speed: each worker imports and warms up (store,
schemas, usage dataset, Stripe client), says it is ready, and waits for the start file; once every
worker is ready the demo writes the start instant into it, and each worker sets it as its warp
clock's real origin (``ONCELY_CLOCK`` carries a provisional one). A worker started later (a
restart, a replacement) finds the file there and joins at once.

What every worker does when it starts (at import, before its claim loop), like the incident's
replicas did when they created their queue object:

* ``guarded`` — ``app.trigger(schedule)`` for both schedules: "run it now", once for the fleet;
* ``unsafe`` — ``task.enqueue()`` for both tasks: one more immediate job per process start, with
  no unique key. The schedules also get the rest of the incident's configuration: overlap
  ``allow``, no singleton, five attempts with exponential backoff from 5 s, and workers without
  heartbeats (:class:`IncidentWorker`: leases never renewed, no self-fencing). The lease TTL
  and the rescues per job come from the environment. And the free-tier task runs the job as the
  incident's system had it (:mod:`.incident_job`: a full recount and every organization row
  rewritten each run, the email sent before the state is committed, no outbox, no fence); the
  Stripe job stays oncely's.

These unsafe switches are the demo's own: task options, a handler and schedule definitions it
rewrites, and a Worker subclass it gives the app (``app.worker_class``); the engine has no
setting for them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from datetime import timedelta
from pathlib import Path

import oncely
from oncely_billing import THRESHOLDS_SCHEDULE, build_app, metering_of, stripe_store
from oncely_billing.demo import incident_job
from oncely_billing.demo.plan import INCIDENT_ATTEMPTS, scale_timeouts, watchdog_config
from oncely_billing.meter import SCHEDULE_NAME as STRIPE_SCHEDULE
from oncely_billing.meter import TASK_NAME as STRIPE_TASK
from oncely_billing.meter import StripeMetering
from oncely_billing.stripe_usage import install_stripe_usage_metering

MODES = ("guarded", "unsafe")
SCHEDULES = (THRESHOLDS_SCHEDULE, STRIPE_SCHEDULE)
# The incident's queue: attempts 5, exponential backoff from 5 s.
INCIDENT_RETRY = oncely.RetryPolicy(attempts=INCIDENT_ATTEMPTS, backoff="exponential",
                                    base_delay=5.0)
START_TIMEOUT = 300.0  # real seconds a worker waits for the demo to start the day


def mode_from_env() -> str:
    mode = os.environ.get("ONCELY_SIM_MODE", "guarded")
    if mode not in MODES:
        raise oncely.ConfigError(f"ONCELY_SIM_MODE={mode!r}: use guarded or unsafe")
    return mode


class IncidentWorker(oncely.Worker):
    """A worker of the incident's queue: it never renews a lease, so a run longer than the
    lease is handed to another worker while it keeps running (and nothing stops it)."""

    renews_leases = False


def make_unsafe(app: oncely.App) -> None:
    """Give both billing schedules the incident's queue settings (overlap allowed, no mutual
    exclusion, retries x5, no heartbeats), and the free-tier task the incident's job."""
    app.worker_class = IncidentWorker
    incident_job.install(app)
    for name in SCHEDULES:
        spec = app.schedules[name]
        app.schedules[name] = dataclasses.replace(spec, overlap=oncely.Overlap.ALLOW)
        task = app.tasks[spec.task]
        task.options = dataclasses.replace(task.options, retry=INCIDENT_RETRY, singleton=False)


def create(mode: str | None = None) -> oncely.App:
    """The demo's billing app, from the environment."""
    built = build_app(os.environ.get("ONCELY_DATABASE_URL"),
                      usage_source=os.environ.get("ONCELY_METERING_USAGE_URL"))
    if STRIPE_TASK not in built.tasks:  # build_app installs it itself when given a Stripe key
        install_stripe_usage_metering(built, metering_of(built).source)
    if (mode or mode_from_env()) == "unsafe":
        make_unsafe(built)
    if isinstance(built.clock, oncely.WarpClock):
        scale_timeouts(built, built.clock.speed)
    return built


def scale_watchdog(app: oncely.App) -> None:
    """Give the app's watchdog (it runs on the leader) thresholds sized for the warp clock
    (:func:`.plan.watchdog_config`, ``ONCELY_SIM_SCALE`` simulated seconds per real
    second of margin)."""
    scale = float(os.environ.get("ONCELY_SIM_SCALE") or 0.0)
    if scale > 0:
        app.watchdog = watchdog_config(scale)


def warm_up(app: oncely.App) -> None:
    """What a long-running worker has done already: open the store and the usage dataset,
    create the billing schemas and the Stripe client. A cold first run costs ~0.5 s of real time,
    fifteen simulated minutes: enough to push the day's first run past its next slot."""
    runtime = metering_of(app)
    runtime.ensure_schema()
    now = app.clock.now()
    stripe_store.ensure_schema(app, int(now.timestamp() * 1000))
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    runtime.source.usage_by_project(hour, hour + timedelta(hours=1), "hour")
    metering = getattr(app.tasks[STRIPE_TASK].fn, "__self__", None)
    if isinstance(metering, StripeMetering):
        metering.client()


def wait_for_start(app: oncely.App, start_file: Path, ready_dir: Path | None) -> None:
    """Say this worker is ready, wait for the start instant, set it on the clock and sleep until
    it comes (see the module docstring)."""
    if ready_dir is not None:
        (ready_dir / str(os.getpid())).touch()
    deadline = time.monotonic() + START_TIMEOUT
    while not start_file.exists():
        if time.monotonic() > deadline:
            raise oncely.ConfigError(f"the demo never wrote {start_file}: is it still running?")
        time.sleep(0.01)
    start = float(start_file.read_text().strip())
    if isinstance(app.clock, oncely.WarpClock):
        app.clock.real_origin = start
    delay = start - time.time()
    if delay > 0:
        time.sleep(delay)


def start_up(app: oncely.App, mode: str) -> list[int]:
    """What a worker does when it starts; returns the ids of the jobs it created."""
    created: list[int] = []
    for name in SCHEDULES:
        if mode == "guarded":
            handle = app.trigger(name)  # None: the fleet already has this slot's job
        else:
            handle = app.tasks[app.schedules[name].task].enqueue()
        if handle is not None and handle.created:
            created.append(handle.id)
    return created


logging.getLogger("stripe").setLevel(logging.WARNING)  # not a log line per meter event
app = create()
scale_watchdog(app)
if os.environ.get("ONCELY_SIM_START_FILE"):
    warm_up(app)
    ready = os.environ.get("ONCELY_SIM_READY_DIR")
    wait_for_start(app, Path(os.environ["ONCELY_SIM_START_FILE"]), Path(ready) if ready else None)
    start_up(app, mode_from_env())
