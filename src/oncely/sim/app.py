"""The billing app every worker process of ``oncely demo`` runs.

    python -m oncely --app oncely.sim.app:app worker

It is :func:`oncely.metering.build_app` (the free-tier threshold job at :35 and its notification
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
``ONCELY_SIM_START``           epoch seconds at which the simulated day starts: a worker launched
                               earlier waits for it, so the whole fleet starts together
=============================  ==================================================================

What every worker does when it starts (at import, before its claim loop), like the incident's
replicas did when they created their queue object:

* ``guarded`` — ``app.trigger(schedule)`` for both schedules: "run it now", once for the fleet;
* ``unsafe`` — ``task.enqueue()`` for both tasks: one more immediate job per process start, with
  no unique key. The schedules also get the rest of the incident's configuration: overlap
  ``allow``, no singleton, five attempts with exponential backoff from 5 s. The lease TTL and
  ``ONCELY_HEARTBEAT=0`` (no renewal, no self-fencing) come from the environment.
"""

from __future__ import annotations

import dataclasses
import os
import time

import oncely
from oncely.metering import THRESHOLDS_SCHEDULE, build_app, metering_of
from oncely.metering.meter import SCHEDULE_NAME as STRIPE_SCHEDULE
from oncely.metering.stripe_usage import install_stripe_usage_metering

MODES = ("guarded", "unsafe")
SCHEDULES = (THRESHOLDS_SCHEDULE, STRIPE_SCHEDULE)
# The incident's queue: attempts 5, exponential backoff from 5 s.
INCIDENT_RETRY = oncely.Retry(attempts=5, backoff="exponential", base_delay=5.0)


def mode_from_env() -> str:
    mode = os.environ.get("ONCELY_SIM_MODE", "guarded")
    if mode not in MODES:
        raise oncely.ConfigError(f"ONCELY_SIM_MODE={mode!r}: use guarded or unsafe")
    return mode


def make_unsafe(app: oncely.App) -> None:
    """Give both billing schedules the incident's queue settings: overlap allowed, no mutual
    exclusion, retries x5."""
    for name in SCHEDULES:
        spec = app.schedules[name]
        app.schedules[name] = dataclasses.replace(spec, overlap=oncely.Overlap.ALLOW)
        task = app.tasks[spec.task]
        task.options = dataclasses.replace(task.options, retry=INCIDENT_RETRY, singleton=False)


def create(mode: str | None = None) -> oncely.App:
    """The demo's billing app, from the environment."""
    built = build_app(os.environ.get("ONCELY_DATABASE_URL"),
                      usage_source=os.environ.get("ONCELY_METERING_USAGE_URL"))
    install_stripe_usage_metering(built, metering_of(built).source)
    if (mode or mode_from_env()) == "unsafe":
        make_unsafe(built)
    return built


def wait_for_start() -> None:
    """Sleep until the simulated day starts (``ONCELY_SIM_START``), if it has not yet."""
    start = float(os.environ.get("ONCELY_SIM_START") or 0.0)
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


app = create()
if os.environ.get("ONCELY_SIM_START"):
    wait_for_start()
    start_up(app, mode_from_env())
