"""Runs a worker's maintenance services in one thread.

Every worker enqueues slots (every ``enqueue_interval``) and takes part in leader elections
(every ``leader_ttl / 3``). Only the leader runs the rescuer and the pruner (every
``maintenance_interval``, jittered so a fleet does not pulse). Losing leadership stops them at
the next tick; shutting down resigns leadership so a successor is elected at once.
"""

from __future__ import annotations

import logging
import random
import threading

from oncely.app import App
from oncely.errors import StoreError
from oncely.maintenance.enqueuer import SlotEnqueuer, register_schedules
from oncely.maintenance.leader import LeaderElector
from oncely.maintenance.pruner import Pruner
from oncely.maintenance.rescuer import Rescuer

log = logging.getLogger("oncely.maintenance")


class Supervisor:
    def __init__(self, app: App, worker_id: str) -> None:
        self.app = app
        self.worker_id = worker_id
        self.enqueuer = SlotEnqueuer(app)
        self.elector = LeaderElector(app, worker_id)
        self.rescuer = Rescuer(app)
        self.pruner = Pruner(app)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="oncely-maintenance", daemon=True)

    def start(self) -> None:
        register_schedules(self.app)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.elector.resign()

    def _loop(self) -> None:
        settings, clock = self.app.settings, self.app.clock
        next_election = next_maintenance = 0.0
        while not self._stop.is_set():
            mono = clock.monotonic()
            self._guard("enqueuer", self.enqueuer.run_once)
            if mono >= next_election:
                self._guard("leader", self.elector.run_once)
                next_election = mono + settings.leader_ttl / 3
            if self.elector.is_leader and mono >= next_maintenance:
                self._guard("rescuer", self.rescuer.run_once)
                self._guard("pruner", self.pruner.run_once)
                jitter = random.uniform(0.9, 1.1)
                next_maintenance = mono + settings.maintenance_interval * jitter
            self._stop.wait(settings.enqueue_interval)

    def _guard(self, name: str, step: object) -> None:
        try:
            step()  # type: ignore[operator]
        except StoreError as exc:
            log.warning("maintenance %s: store error: %s", name, exc)
        except Exception:
            log.exception("maintenance %s failed", name)
