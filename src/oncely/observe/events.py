"""One event stream inside the engine.

Components call :meth:`EventBus.emit` with a stable event name (``job.succeeded``,
``lease.lost``, ``slot.enqueued`` …) and keyword fields. Subscribers — structured logs,
Prometheus metrics, tests — receive :class:`Event` objects; a subscriber that raises is logged and
never breaks the engine. Every event is listed in ``docs/events.md``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("oncely")


class Event:
    """One event: its name, when it happened, its fields. Built several times per job, so a
    plain class with slots rather than a frozen dataclass (whose ``__init__`` goes through
    ``object.__setattr__`` for every field)."""

    __slots__ = ("at", "fields", "name")

    def __init__(self, name: str, at: datetime, fields: dict[str, Any] | None = None) -> None:
        self.name = name
        self.at = at
        self.fields = {} if fields is None else fields

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {self.at!r}, {self.fields!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.name, self.at, self.fields) == (other.name, other.at, other.fields)

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.name, "at": self.at.isoformat(), **self.fields}


Subscriber = Callable[[Event], None]

# Events a human wants to see at INFO; the rest of the stream logs at DEBUG.
_INFO_EVENTS = frozenset(
    {
        "worker.started",
        "worker.stopping",
        "worker.stopped",
        "worker.liveness_lost",
        "worker.liveness_restored",
        "leader.elected",
        "leader.lost",
        "lease.lost",
        "lease.self_fenced",
        "job.rescued",
        "job.failed",
        "job.released",
        "job.overrunning",
        "job.overrun_ended",
        "fence.rejected",
        "schedule.registered",
        "schedule.revised",
        "schedule.declaration_superseded",
        "schedule.declaration_refused",
        "schedule.undeclared",
        "schedule.paused",
        "schedule.resumed",
        "schedule.backfilled",
        "schedule.deleted",
        "slot.triggered",
        "control.registered",
        "control.updated",
        "queue.paused",
        "queue.resumed",
        "job.retry_requested",
        "job.cancel_requested",
        "job.dead_letters_retried",
        "job.run_now_refused",
        "slot.skipped_overlap",
        "slot.missed",
        "slot.coalesced",
        "store.unavailable",
        "store.recovered",
        "schema.migrated",
    }
)


# Events that call for a human's attention.
_WARNING_EVENTS = frozenset({"anomaly.raised"})


class EventBus:
    """Delivers each event to the subscribers that want it. A subscriber may name the events it
    wants (``subscribe(fn, names=…)``); an event nobody wants costs a dict lookup and no
    :class:`Event`, no clock read. :meth:`wants` lets a hot path skip gathering the fields of
    such an event too."""

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        # (subscriber, the names it wants or None for all), and the subscribers of each event
        # name seen so far. Replaced together, never mutated but for adding a name's route:
        # emit (several times per job) reads them without a lock.
        self._state: tuple[tuple[tuple[Subscriber, frozenset[str] | None], ...],
                           dict[str, tuple[Subscriber, ...]]] = ((), {})
        self._lock = threading.Lock()

    def subscribe(
        self, subscriber: Subscriber, names: Iterable[str] | None = None
    ) -> Callable[[], None]:
        """Deliver the events called ``names`` (every event when None) to ``subscriber``."""
        entry = (subscriber, None if names is None else frozenset(names))
        with self._lock:
            self._state = ((*self._state[0], entry), {})

        def unsubscribe() -> None:
            with self._lock:
                rest = list(self._state[0])
                if entry in rest:
                    rest.remove(entry)
                    self._state = (tuple(rest), {})

        return unsubscribe

    def _route(self, name: str) -> tuple[Subscriber, ...]:
        subscribers, routes = self._state
        route = routes.get(name)
        if route is None:  # a stale write after a (un)subscribe lands in the dropped dict
            route = routes[name] = tuple(
                subscriber for subscriber, names in subscribers if names is None or name in names
            )
        return route

    def wants(self, name: str) -> bool:
        """Whether any subscriber wants the event ``name`` now."""
        return bool(self._route(name))

    def emit(self, name: str, /, **fields: Any) -> None:
        route = self._route(name)
        if not route:
            return
        event = Event(name, self._now(), fields)
        for subscriber in route:
            try:
                subscriber(event)
            except Exception:  # a broken subscriber must never break a job
                log.exception("event subscriber %r failed on %s", subscriber, name)


def log_subscriber(json_format: bool = False) -> Subscriber:
    """A subscriber that writes each event to the ``oncely`` logger with a stable ``event`` key."""

    def write(event: Event) -> None:
        level = (logging.WARNING if event.name in _WARNING_EVENTS
                 else logging.INFO if event.name in _INFO_EVENTS else logging.DEBUG)
        if not log.isEnabledFor(level):
            return
        if json_format:
            log.log(level, json.dumps(event.to_dict(), default=str))
        else:
            detail = " ".join(f"{key}={value}" for key, value in event.fields.items())
            log.log(level, "%s %s", event.name, detail, extra={"event": event.name})

    return write
