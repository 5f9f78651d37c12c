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
_WARNING_EVENTS = frozenset({"anomaly.raised", "schedule.invalid"})


Route = tuple[tuple[Subscriber, Callable[[str], bool] | None], ...]


class EventBus:
    """Delivers each event to the subscribers that want it. A subscriber may name the events it
    wants (``subscribe(fn, names=…)``) and say at each event whether it wants it now
    (``when=``, e.g. whether its logger's level is enabled). An event nobody wants costs a dict
    lookup: no :class:`Event`, no clock read; :meth:`wants` lets a hot path skip gathering its
    fields too."""

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        # The subscriptions, and the route of each event name seen so far. Replaced together,
        # never mutated but for adding a name's route: emit (several times per job) reads them
        # without a lock.
        self._state: tuple[tuple[_Subscription, ...], dict[str, Route]] = ((), {})
        self._lock = threading.Lock()

    def subscribe(
        self,
        subscriber: Subscriber,
        names: Iterable[str] | None = None,
        *,
        when: Callable[[str], bool] | None = None,
    ) -> Callable[[], None]:
        """Deliver the events called ``names`` (every event when None) to ``subscriber``, each
        only if ``when(name)`` says so at that moment (when given)."""
        entry = _Subscription(subscriber, None if names is None else frozenset(names), when)
        with self._lock:
            self._state = ((*self._state[0], entry), {})

        def unsubscribe() -> None:
            with self._lock:
                rest = list(self._state[0])
                if entry in rest:
                    rest.remove(entry)
                    self._state = (tuple(rest), {})

        return unsubscribe

    def _route(self, name: str) -> Route:
        subscriptions, routes = self._state
        route = routes.get(name)
        if route is None:  # a stale write after a (un)subscribe lands in the dropped dict
            route = routes[name] = tuple(
                (entry.subscriber, entry.when) for entry in subscriptions
                if entry.names is None or name in entry.names
            )
        return route

    def wants(self, name: str) -> bool:
        """Whether any subscriber wants the event ``name`` now."""
        return any(when is None or when(name) for _, when in self._route(name))

    def emit(self, name: str, /, **fields: Any) -> None:
        event: Event | None = None
        for subscriber, when in self._route(name):
            if when is not None and not when(name):
                continue
            if event is None:
                event = Event(name, self._now(), fields)
            try:
                subscriber(event)
            except Exception:  # a broken subscriber must never break a job
                log.exception("event subscriber %r failed on %s", subscriber, name)


class _Subscription:
    __slots__ = ("names", "subscriber", "when")

    def __init__(self, subscriber: Subscriber, names: frozenset[str] | None,
                 when: Callable[[str], bool] | None) -> None:
        self.subscriber, self.names, self.when = subscriber, names, when


def log_level(name: str) -> int:
    """The level the event ``name`` is logged at."""
    return (logging.WARNING if name in _WARNING_EVENTS
            else logging.INFO if name in _INFO_EVENTS else logging.DEBUG)


def logs_event(name: str) -> bool:
    """Whether :func:`log_subscriber` would write the event ``name`` now (its logger's level):
    subscribe it with ``when=logs_event``."""
    return log.isEnabledFor(log_level(name))


def log_subscriber(json_format: bool = False) -> Subscriber:
    """A subscriber that writes each event to the ``oncely`` logger with a stable ``event`` key."""

    def write(event: Event) -> None:
        level = log_level(event.name)
        if not log.isEnabledFor(level):
            return
        if json_format:
            log.log(level, json.dumps(event.to_dict(), default=str))
        else:
            detail = " ".join(f"{key}={value}" for key, value in event.fields.items())
            log.log(level, "%s %s", event.name, detail, extra={"event": event.name})

    return write
