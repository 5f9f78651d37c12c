"""The Runtime: what the engine's services are built from, instead of the whole App.

The worker, its lease keeper and job contexts, and the maintenance services (slot enqueuer,
leader elector, rescuer, pruner, watchdog) need the store, the clock, the event bus, the
settings and the app's declarations (tasks, schedules, queues, the watchdog's thresholds) — never
the App's facade. :meth:`oncely.App.runtime` hands them this small frozen object, so they sit
below the App in the layering (the ``layers`` contract in ``pyproject.toml``) and can be built in
a test from any store and clock.

The declarations are the App's own mappings, not copies: a task registered after the runtime was
built is still seen. ``app`` is the application object handlers receive as ``ctx.app``; the
services themselves never call it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from oncely.clock import Clock
from oncely.config import Settings
from oncely.observe.diagnose import WatchdogConfig
from oncely.observe.events import EventBus
from oncely.queues import QueueSpec
from oncely.schedules import ScheduleSpec
from oncely.store.base import Store
from oncely.tasks import Task


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    clock: Clock
    events: EventBus
    open_store: Callable[[], Store]  # opens (and migrates) the store on first use
    tasks: Mapping[str, Task]
    schedules: Mapping[str, ScheduleSpec]
    queues: Mapping[str, QueueSpec]
    watchdog: WatchdogConfig
    app: Any = None  # what handlers get as ctx.app

    @property
    def store(self) -> Store:
        return self.open_store()


class Service(Protocol):
    """Something a worker starts and stops (its maintenance)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


# Builds a worker's maintenance (the App passes the supervisor of :mod:`oncely.maintenance`,
# which sits above the worker: the worker only starts and stops what it is given).
MaintenanceFactory = Callable[[Runtime, str], Service]


class HasRuntime(Protocol):
    """An object that carries a runtime (the App)."""

    @property
    def runtime(self) -> Runtime: ...
