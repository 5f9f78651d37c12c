"""Queue controls: what they are, how they are measured, and the gate a claim passes through.

A **control** is one row of ``oncely_controls``, for a queue or for a task:

* queue: ``paused``, ``max_running`` (running jobs of the queue, fleet-wide), a rate limit
  (``rate_limit`` starts per ``rate_window`` seconds) and the queue's retention;
* task: a rate limit and ``max_per_key`` (running jobs per value of the task's concurrency key,
  which every job of the task carries, formatted from its args when it was enqueued).

The drivers read the active controls and their **usage** (running jobs per limited queue and per
key, the rate rings' next entries) inside the claim transaction, then walk the claim's candidates
in claim order through a :class:`ClaimRoom`, which admits a job only while every control that
applies to it has room, and takes that room as it admits. Dialect-neutral on purpose: both
drivers and the read model (``jobs show``, ``queues list``) use the same arithmetic. The rules
themselves, and the precision of the rate limit, are in :mod:`oncely.store.base`.

The rate ring: a scope with a limit of n starts per w seconds keeps its last n starts, start
number k in slot ``k mod n``, and ``rate_seq`` (starts so far) on its control row. Start number k
may happen at ``now`` only if the entry in its slot — start number k - n — is empty or logged at
or before ``now - w``. A claim reads as many entries from ``rate_seq`` on as it could admit, so
the cost per claim follows the claim's size, not the number of starts in a window.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "ClaimRoom",
    "Control",
    "ControlKind",
    "ControlUpsert",
    "ControlUsage",
    "LimitWait",
    "WaitReason",
    "concurrency_key",
    "earliest",
    "key_scope",
    "key_task",
    "relevant",
    "ring_advance",
    "scope_of",
    "usage_request",
]


class ControlKind(enum.StrEnum):
    QUEUE = "queue"
    TASK = "task"


class WaitReason(enum.StrEnum):
    PAUSED = "paused"  # the queue is paused
    MAX_RUNNING = "max_running"  # the queue runs max_running jobs already
    RATE = "rate"  # the queue's or task's rate limit has no start left in the window
    MAX_PER_KEY = "max_per_key"  # the job's concurrency key runs max_per_key jobs already


def scope_of(kind: ControlKind | str, name: str) -> str:
    """The name a control's starts are logged under: ``queue:billing``, ``task:send``."""
    return f"{kind}:{name}"


@dataclass(frozen=True)
class Control:
    kind: ControlKind
    name: str
    paused: bool = False
    max_running: int | None = None
    max_per_key: int | None = None
    rate_limit: int | None = None  # starts per rate_window
    rate_window: float | None = None  # seconds
    # queue only: per finished state, {"age": seconds | None, "count": jobs | None}
    retention: dict[str, dict[str, Any]] = field(default_factory=dict)
    spec_hash: str | None = None
    declared_at: datetime | None = None  # last time a worker declared it (None: only paused)
    updated_at: datetime | None = None
    rate_seq: int = 0  # starts logged in the rate ring so far

    @functools.cached_property
    def scope(self) -> str:
        return scope_of(self.kind, self.name)

    @property
    def rated(self) -> bool:
        return self.rate_limit is not None and self.rate_window is not None

    @property
    def active(self) -> bool:
        """Whether a claim has anything to enforce for it."""
        return (self.paused or self.max_running is not None or self.max_per_key is not None
                or self.rated)

    def rate_text(self) -> str | None:
        if not self.rated:
            return None
        return f"{self.rate_limit}/{self.rate_window:g}s"

    def ring_slots(self, depth: int) -> list[int]:
        """The ring slots of the next ``depth`` starts (at most a whole ring)."""
        if not self.rated:
            return []
        assert self.rate_limit is not None
        return [(self.rate_seq + j) % self.rate_limit for j in range(min(depth, self.rate_limit))]


@dataclass(frozen=True)
class ControlUpsert:
    """A worker's declaration of one control (``paused`` is never declared: it is set by
    :meth:`~oncely.store.base.Store.control_pause` and survives declarations). A changed rate
    limit empties the scope's ring."""

    kind: ControlKind
    name: str
    now: datetime
    max_running: int | None = None
    max_per_key: int | None = None
    rate_limit: int | None = None
    rate_window: float | None = None
    retention: dict[str, dict[str, Any]] = field(default_factory=dict)
    spec_hash: str = ""


@dataclass(frozen=True)
class ControlUsage:
    """What the controls are measured against, read in one transaction."""

    running: dict[str, int] = field(default_factory=dict)  # queue -> running jobs
    # rate scope -> {ring slot: when the start in it was logged}; a slot not there is empty
    ring: dict[str, dict[int, datetime]] = field(default_factory=dict)
    key_running: dict[str, int] = field(default_factory=dict)  # concurrency key -> running


@dataclass(frozen=True)
class LimitWait:
    """Why due jobs of a scope cannot start now, and from when a rate limit lets them."""

    scope: str  # "queue:billing", "task:send", "key:send/org:42"
    reason: WaitReason
    until: datetime | None = None  # rate: when the next start is allowed

    def describe(self) -> str:
        kind, _, name = self.scope.partition(":")
        what = {
            WaitReason.PAUSED: "is paused",
            WaitReason.MAX_RUNNING: "runs its max_running jobs",
            WaitReason.RATE: "used its rate limit",
            WaitReason.MAX_PER_KEY: "runs its max_per_key jobs",
        }[self.reason]
        text = f"{kind} {name} {what}"
        if self.until is not None:
            text += f" until {self.until.isoformat(timespec='milliseconds')}"
        return text


def usage_request(
    controls: Iterable[Control], depth: int
) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """What a driver must read for these controls: queues whose running jobs count, the
    (scope, slot) ring entries of the next ``depth`` starts, and tasks whose keys count."""
    queues: list[str] = []
    slots: list[tuple[str, int]] = []
    tasks: list[str] = []
    for control in controls:
        if control.kind == ControlKind.QUEUE and control.max_running is not None:
            queues.append(control.name)
        slots.extend((control.scope, slot) for slot in control.ring_slots(depth))
        if control.kind == ControlKind.TASK and control.max_per_key is not None:
            tasks.append(control.name)
    return queues, slots, tasks


def relevant(controls: Iterable[Control], queues: Sequence[str] | None) -> list[Control]:
    """The active controls a claim over ``queues`` (None: every queue) must enforce: those of
    its queues and every task's (a task's jobs may sit in any queue)."""
    return [
        c for c in controls
        if c.active and (c.kind == ControlKind.TASK or queues is None or c.name in queues)
    ]


class ClaimRoom:
    """The room every control has left in one claim, taken as the claim admits jobs (what the
    claim may still start).

    ``blocked_*`` name what has no room at all, so drivers can leave those jobs out of their
    candidate scan; ``version`` grows whenever something new gets blocked, so a driver knows to
    scan again with the longer exclusion lists. ``depth`` is how many ring entries per rate scope
    the usage holds (the claim's limit; 1 for the read model).
    """

    def __init__(
        self, controls: Iterable[Control], usage: ControlUsage, now: datetime, depth: int = 1
    ) -> None:
        controls = list(controls)
        self.now = now
        self.usage = usage
        self.queues = {c.name: c for c in controls if c.kind == ControlKind.QUEUE and c.active}
        self.tasks = {c.name: c for c in controls if c.kind == ControlKind.TASK and c.active}
        self.version = 0
        self.waits: dict[str, LimitWait] = {}
        self._depth = depth
        self._left: dict[str, float] = {}  # scope -> starts it may still make
        self._binding: dict[str, WaitReason] = {}  # scope -> the limit that runs out first
        self._taken: dict[str, int] = {}  # rate scope -> starts admitted in this gate
        self._keys: dict[str, int] = dict(usage.key_running)  # key -> running (and admitted)
        self.blocked_keys: set[str] = set()
        for control in self._controls():
            self._left[control.scope], self._binding[control.scope] = self._room(control)
            if self._left[control.scope] <= 0:
                self._block(control)
        for key, running in self._keys.items():
            limit = self._key_limit(key_task(key), key)
            if limit is not None and running >= limit:
                self._block_key(key)

    # what applies ----------------------------------------------------------------------------

    def limits(self, queue: str, task: str) -> bool:
        return queue in self.queues or task in self.tasks

    @property
    def limited_queues(self) -> list[str]:
        return sorted(self.queues)

    @property
    def limited_tasks(self) -> list[str]:
        return sorted(self.tasks)

    @property
    def blocked_queues(self) -> list[str]:
        return sorted(name for name, c in self.queues.items() if self._left[c.scope] <= 0)

    @property
    def blocked_tasks(self) -> list[str]:
        return sorted(name for name, c in self.tasks.items() if self._left[c.scope] <= 0)

    # admission -------------------------------------------------------------------------------

    def admits(self, queue: str, task: str, key: str | None) -> bool:
        return self.wait_for(queue, task, key) is None

    def wait_for(self, queue: str, task: str, key: str | None) -> LimitWait | None:
        """The first control that keeps a due job of ``queue``/``task``/``key`` waiting."""
        for control in (self.queues.get(queue), self.tasks.get(task)):
            if control is not None and self._left[control.scope] <= 0:
                return self.waits[control.scope]
        limit = self._key_limit(task, key)
        if key is not None and limit is not None and self._keys.get(key, 0) >= limit:
            return self.waits.get(key_scope(key)) or self._block_key(key)
        return None

    def take(self, queue: str, task: str, key: str | None) -> None:
        """Count one admitted start against every control that applies to it."""
        for control in (self.queues.get(queue), self.tasks.get(task)):
            if control is None:
                continue
            self._left[control.scope] -= 1
            if control.rated:
                self._taken[control.scope] = self._taken.get(control.scope, 0) + 1
            if self._left[control.scope] <= 0:
                self._block(control)
        limit = self._key_limit(task, key)
        if key is not None and limit is not None:
            self._keys[key] = self._keys.get(key, 0) + 1
            if self._keys[key] >= limit:
                self._block_key(key)

    def ring_entries(self, started: Iterable[tuple[str, str, int]]) -> list[tuple[str, int, int]]:
        """The ring entries (scope, slot, job id) to log for the jobs this gate admitted that
        started, given as (queue, task, job id); their slots are the ones the gate checked."""
        entries: list[tuple[str, int, int]] = []
        used: dict[str, int] = {}
        for queue, task, job_id in started:
            for control in (self.queues.get(queue), self.tasks.get(task)):
                if control is None or not control.rated:
                    continue
                assert control.rate_limit is not None
                count = used.get(control.scope, 0)
                used[control.scope] = count + 1
                entries.append((control.scope, (control.rate_seq + count) % control.rate_limit,
                                job_id))
        return entries

    # internals -------------------------------------------------------------------------------

    def _controls(self) -> list[Control]:
        return [*self.queues.values(), *self.tasks.values()]

    def _room(self, control: Control) -> tuple[float, WaitReason]:
        if control.paused:
            return 0, WaitReason.PAUSED
        room, reason = math.inf, WaitReason.MAX_RUNNING
        if control.kind == ControlKind.QUEUE and control.max_running is not None:
            room = control.max_running - self.usage.running.get(control.name, 0)
        if control.rated:
            assert control.rate_limit is not None
            slots = control.ring_slots(self._depth)
            free: float = 0
            for slot in slots:
                if not self._slot_free(control, slot):
                    break
                free += 1
            if free == len(slots) < control.rate_limit:
                free = math.inf  # room for more starts than one gate may take
            if free < room:
                room, reason = free, WaitReason.RATE
        return room, reason

    def _slot_free(self, control: Control, slot: int) -> bool:
        logged = self.usage.ring.get(control.scope, {}).get(slot)
        return logged is None or logged <= self.now - timedelta(seconds=control.rate_window or 0)

    def _block(self, control: Control) -> None:
        self.version += 1
        reason, until = self._binding[control.scope], None
        if reason == WaitReason.RATE:
            until = self._next_allowed(control)
        self.waits[control.scope] = LimitWait(control.scope, reason, until)

    def _next_allowed(self, control: Control) -> datetime:
        """When the ring lets the scope's next start happen: when the start in that start's
        slot leaves the window (this claim's own starts leave it ``rate_window`` from now)."""
        window = timedelta(seconds=control.rate_window or 0)
        slots = control.ring_slots(self._depth)
        taken = self._taken.get(control.scope, 0)
        logged = (self.usage.ring.get(control.scope, {}).get(slots[taken])
                  if taken < len(slots) else None)
        return (logged or self.now) + window

    def _block_key(self, key: str) -> LimitWait:
        if key not in self.blocked_keys:
            self.version += 1
            self.blocked_keys.add(key)
        wait = LimitWait(key_scope(key), WaitReason.MAX_PER_KEY)
        self.waits[wait.scope] = wait
        return wait

    def _key_limit(self, task: str, key: str | None) -> int | None:
        control = self.tasks.get(task)
        return None if key is None or control is None else control.max_per_key


def ring_advance(entries: Iterable[tuple[str, int, int]]) -> dict[str, int]:
    """How far each scope's ``rate_seq`` moves for these ring entries."""
    counts: dict[str, int] = {}
    for scope, _, _ in entries:
        counts[scope] = counts.get(scope, 0) + 1
    return counts


def key_scope(key: str) -> str:
    return f"key:{key}"


def concurrency_key(task: str, value: str) -> str:
    """The stored concurrency key of a job of ``task`` whose key template formatted to ``value``:
    task names never contain ``/``, so the key names its task unambiguously."""
    return f"{task}/{value}"


def key_task(key: str) -> str:
    return key.partition("/")[0]


def earliest(waits: Iterable[LimitWait]) -> datetime | None:
    """When the first rate limit among ``waits`` allows a start again, if any."""
    return min((w.until for w in waits if w.until is not None), default=None)
