"""Runs a worker's maintenance services in one thread.

Every worker enqueues slots (every ``enqueue_interval``, and also the moment a declared
schedule's next slot falls due, so a slot is not enqueued up to an interval late), takes part
in leader elections (every ``leader_ttl / 3``) and runs the rescuer on every tick (a couple of
indexed look-ups: a provably dead worker's job is back in play within a tick, a silent one's
within its lease TTL plus a tick; any worker may rescue, rescues are fenced). Only the leader
runs the pruner (every
``maintenance_interval``, jittered so a fleet does not pulse) and the watchdog (every
``watchdog_interval``). Each run is reported as a ``maintenance.ran`` event (or
``maintenance.failed``). Losing leadership stops them at the next tick; shutting down resigns
leadership so a successor is elected at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import datetime

from oncely.errors import OncelyError, StoreError
from oncely.maintenance.enqueuer import SlotEnqueuer, register_schedules
from oncely.maintenance.leader import LeaderElector
from oncely.maintenance.pruner import Pruner
from oncely.maintenance.rescuer import Rescuer
from oncely.maintenance.watchdog import Watchdog
from oncely.runtime import Runtime
from oncely.schedules import next_slot

log = logging.getLogger("oncely.maintenance")

SLOT_WAKE_LAG = 0.002  # seconds past a slot's instant to wake: after it, never before it
RESCUE_INTERVAL = 0.5  # the longest tick: how soon a provably dead worker's jobs are rescued


class Supervisor:
    def __init__(self, runtime: Runtime, worker_id: str) -> None:
        self.runtime = runtime
        self.worker_id = worker_id
        self.enqueuer = SlotEnqueuer(runtime)
        self.elector = LeaderElector(runtime, worker_id)
        self.rescuer = Rescuer(runtime, worker_id=worker_id)
        self.pruner = Pruner(runtime)
        self.watchdog = Watchdog(runtime)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="oncely-maintenance", daemon=True)
        self._last_now: datetime | None = None

    def start(self) -> None:
        register_schedules(self.runtime, self.worker_id)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.elector.resign()

    def _loop(self) -> None:
        settings, clock = self.runtime.settings, self.runtime.clock
        next_election = next_maintenance = next_watchdog = 0.0
        while not self._stop.is_set():
            mono = clock.monotonic()
            self._guard("enqueuer", self.enqueuer.run_once)
            if mono >= next_election:
                self._guard("leader", self.elector.run_once)
                next_election = mono + settings.leader_ttl / 3
            self._guard("rescuer", self.rescuer.run_once)  # every worker: see rescuer.py
            if self.elector.is_leader and mono >= next_maintenance:
                self._guard("pruner", self.pruner.run_once)
                jitter = random.uniform(0.9, 1.1)
                next_maintenance = mono + settings.maintenance_interval * jitter
                if not self.pruner.caught_up:  # a backlog: keep at it, a budget per tick
                    next_maintenance = mono
            if self.elector.is_leader and mono >= next_watchdog:
                self._guard("watchdog", self.watchdog.run_once)
                next_watchdog = mono + settings.watchdog_interval
            try:
                pause = self._pause(min(settings.enqueue_interval, RESCUE_INTERVAL))
            except Exception:  # the loop must outlive any schedule arithmetic
                log.exception("maintenance: could not compute the next wake-up")
                pause = min(settings.enqueue_interval, RESCUE_INTERVAL)
            self._stop.wait(pause)

    def _pause(self, interval: float) -> float:
        """Seconds to the next tick: ``interval``, or less when the next slot of a declared
        schedule falls due sooner. A clock that did not move since the last tick (a frozen test
        clock) gets the plain interval, so the loop never spins."""
        now = self.runtime.clock.now()
        still, self._last_now = now == self._last_now, now
        if still:
            return interval
        pause = interval
        for spec in self.runtime.schedules.values():
            if not spec.enabled:
                continue
            try:
                due = next_slot(spec, now)
            except OncelyError:
                continue  # a cron without a next slot; the enqueuer reports it
            pause = min(pause, (due - now).total_seconds() + SLOT_WAKE_LAG)
        return max(pause, 0.001)

    def _guard(self, name: str, step: object) -> None:
        started = time.monotonic()
        try:
            step()  # type: ignore[operator]
        except StoreError as exc:
            log.warning("maintenance %s: store error: %s", name, exc)
            self.runtime.events.emit("maintenance.failed", service=name, error=str(exc))
        except Exception as exc:
            log.exception("maintenance %s failed", name)
            self.runtime.events.emit("maintenance.failed", service=name, error=str(exc))
        else:
            self.runtime.events.emit("maintenance.ran", service=name,
                                     seconds=round(time.monotonic() - started, 6))
