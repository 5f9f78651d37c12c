"""Schedule specs and slot arithmetic: when a schedule fires, and what the enqueuer does with the
slots it finds. Pure functions: no I/O and no clock; ``now`` is always an argument.

Slots
=====

A slot is one nominal fire time of a schedule, an aware UTC datetime that every process computes
identically from the spec, so ``UNIQUE(schedule, slot)`` alone makes a slot a job at most once.

* Intervals (``every``, at least 1 s) fire at ``anchor + k * every`` for every integer ``k``; the
  anchor defaults to the Unix epoch, so ``every=60`` fires on each whole UTC minute. Intervals run
  on real time: ``tz`` and ``dst`` do not apply to them.
* Crons use cronsim's syntax, 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds
  first), matched against the wall clock in ``tz``, to the second; how wall times map to real
  instants across daylight-saving changes (and the ``dst`` policy) is :mod:`oncely.cron`'s.

Misfire grace and catch-up
==========================

:func:`plan_slots` decides the fate of each slot in ``(cursor, now]``, or ``(created_at, now]``
without a cursor: registering a schedule never enqueues its past. A slot's lateness is
``now - due_at(slot)``; a slot at most ``misfire_grace`` late (default: ``min(period, 60 s)``, see
:func:`period_hint`) runs as an ordinary on-time slot. Later slots are *missed*, and ``catch_up``
decides: ``"none"`` records each ``missed``; ``"latest"`` (default) runs the newest missed slot and
records the older ones ``coalesced`` into it — unless an on-time slot follows them, which then
covers them all, so a fleet back from an outage runs once, not twice in a row; ``"all"`` runs the
newest ``catch_up_limit`` missed slots, oldest first, and coalesces the older excess: after a long
outage the recent backlog is the useful part.

One call records at most ``limit`` slots (1,000), the oldest of the window, and reports
``more=True`` with ``new_cursor`` on the last of them; the caller plans again at once. A schedule
firing every second that was down for a week is worked off in bounded batches, each slot getting
exactly one outcome across the calls; the planner looks ``catch_up_limit`` slots past a batch to
classify it. A disabled schedule has no due slots: nothing is recorded, and its cursor moves to
``now``, so enabling it again does not catch up the pause.

Validation
==========

A spec is validated when it is built, whichever way it comes — ``app.schedule``, a dynamic
schedule from the command line, the API or the dashboard's form, or a stored definition read
back (:meth:`ScheduleSpec.from_spec_dict`) — with :mod:`oncely.validate`'s checks: the schedule,
task and queue are names (1-200 of ``A-Z a-z 0-9 _ . : -``); ``priority`` a 32-bit whole number;
``every`` (at least 1 s), ``misfire_grace`` and ``jitter`` (at least 0) finite numbers of seconds
of at most 100 years (:data:`~oncely.validate.DELAY_MAX`); ``args`` JSON without a NUL or lone
surrogate; ``catch_up_limit`` 1-10,000; a cron of at most 500 characters; a known IANA time
zone. A stored row that fails (an older release's, or one written straight into the store) is
an :class:`~oncely.errors.InvalidSchedule`: the enqueuer skips it (the others fire), readers
show it as invalid.

Jitter
======

``jitter`` (below the period) spreads runs over ``[slot, slot + jitter)``. :func:`jitter_for`
derives each slot's delay from a hash of the schedule name and the slot, so every worker agrees;
the slot itself, the job's identity, never moves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from itertools import islice, takewhile
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from oncely.cron import check_cron, cron_instants, cron_period
from oncely.errors import ArgsNotJSON, ConfigError, InvalidSchedule
from oncely.types import Overlap
from oncely.validate import INT32, NAME_MAX, check_int, check_name, check_seconds, dump_args

CatchUp = Literal["none", "latest", "all"]
DstPolicy = Literal["skip", "shift"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SLOTS_PER_PLAN = 1000
MAX_CATCH_UP_LIMIT = 10_000
DEFAULT_MISFIRE_GRACE = 60.0
CRON_MAX = 500  # characters of a cron expression
_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule's full definition, validated on construction (:class:`InvalidSchedule`)."""

    name: str
    task: str
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    args: dict[str, Any] = field(default_factory=dict, hash=False)
    queue: str | None = None
    priority: int = 0
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = "latest"
    catch_up_limit: int = 100
    jitter: float = 0.0
    dst: DstPolicy = "shift"
    enabled: bool = True
    misfire_grace: float | None = None
    anchor: datetime | None = None

    def __post_init__(self) -> None:
        _validate_fields(self)
        _validate_trigger(self)
        _validate_timing(self)

    # fmt: off
    @classmethod
    def create(
        cls, name: str, task: str, *, cron: str | None = None,
        every: float | timedelta | None = None, tz: str = "UTC",
        args: Mapping[str, Any] | None = None, queue: str | None = None, priority: int = 0,
        overlap: Overlap | str = Overlap.SKIP, catch_up: str = "latest", catch_up_limit: int = 100,
        jitter: float | timedelta = 0.0, dst: str = "shift", enabled: bool = True,
        misfire_grace: float | timedelta | None = None, anchor: datetime | str | None = None,
    ) -> ScheduleSpec:
        """Build a spec from friendlier inputs: timedeltas, policy names, an ISO 8601 anchor."""
        return cls(
            name=name, task=task, cron=cron, every=_seconds(every), tz=tz,
            args=dict(args) if isinstance(args, Mapping) else cast(dict[str, Any], args or {}),
            queue=queue, priority=priority, overlap=cast(Overlap, overlap),
            catch_up=cast(CatchUp, catch_up), catch_up_limit=catch_up_limit,
            jitter=cast(float, _seconds(jitter)), dst=cast(DstPolicy, dst), enabled=enabled,
            misfire_grace=_seconds(misfire_grace), anchor=cast(datetime | None, anchor),
        )
    # fmt: on

    @property
    def effective_misfire_grace(self) -> float:
        if self.misfire_grace is not None:
            return self.misfire_grace
        return min(period_hint(self), DEFAULT_MISFIRE_GRACE)

    def to_spec_dict(self) -> dict[str, Any]:
        """The spec as a JSON-safe dict; :meth:`from_spec_dict` reads it back."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["args"] = json.loads(json.dumps(self.args))
        data["overlap"] = self.overlap.value
        data["anchor"] = self.anchor.isoformat() if self.anchor is not None else None
        return data

    @classmethod
    def from_spec_dict(cls, data: Mapping[str, Any]) -> ScheduleSpec:
        """A definition as stored (or sent as JSON) read back, validated like any other: a
        stored row that does not hold a valid definition — written by an older release, or
        straight into the store — raises :class:`InvalidSchedule`, never anything else, so
        every reader can show it as invalid instead of failing."""
        if not isinstance(data, Mapping):
            raise InvalidSchedule(f"a schedule definition must be an object, got "
                                  f"{ascii(data)[:60]}")
        name = data.get("name", "?")
        unknown = sorted(str(key) for key in set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise _invalid(name, f"unknown spec keys: {ascii(', '.join(unknown))[1:-1][:200]}")
        if "name" not in data or "task" not in data:
            raise _invalid(name, "a spec needs both name and task")
        try:
            return cls.create(**data)
        except InvalidSchedule:
            raise
        except ConfigError as exc:  # args that cannot be stored: already names the schedule
            raise InvalidSchedule(str(exc)) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise _invalid(name, f"{type(exc).__name__}: {exc}") from None

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of :meth:`to_spec_dict`: equal specs, equal hashes."""
        canonical = json.dumps(self.to_spec_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SlotPlan:
    """What the enqueuer records for one window; every list is oldest first."""

    run: list[datetime]
    missed: list[datetime]
    coalesced: list[datetime]
    new_cursor: datetime | None
    more: bool = False  # the window held more than one call's limit: plan again from new_cursor


def _invalid(name: object, problem: str) -> InvalidSchedule:
    shown = ascii(name)
    return InvalidSchedule(f"schedule {shown if len(shown) <= 80 else shown[:79] + '…'}: "
                           f"{problem}")


def _seconds(value: float | timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(spec: ScheduleSpec, attr: str, minimum: float) -> float:
    """A duration field as float seconds: finite, at least ``minimum``, at most
    :data:`~oncely.validate.DELAY_MAX` (100 years), so no slot arithmetic can overflow."""
    try:
        value = check_seconds(attr, getattr(spec, attr), minimum)
    except ConfigError as exc:
        raise _invalid(spec.name, str(exc)) from None
    object.__setattr__(spec, attr, value)
    return value


def _checked(spec: ScheduleSpec, check: Callable[[], object]) -> None:
    """Run one of :mod:`oncely.validate`'s checks; its refusal names the schedule."""
    try:
        check()
    except ConfigError as exc:
        raise _invalid(spec.name, str(exc)) from None


def _expect(spec: ScheduleSpec, ok: object, problem: str) -> None:
    if not ok:
        raise _invalid(spec.name, problem)


def _one_of(spec: ScheduleSpec, attr: str, options: tuple[str, ...]) -> None:
    value = getattr(spec, attr)
    _expect(spec, value in options, f"{attr} must be one of {', '.join(options)}, got {value!r}")


def _validate_fields(spec: ScheduleSpec) -> None:
    try:
        check_name("schedule", spec.name)
    except ConfigError as exc:
        raise InvalidSchedule(str(exc)) from None
    limit = spec.catch_up_limit
    _checked(spec, lambda: check_name("task", spec.task))
    if spec.queue is not None:
        _checked(spec, lambda: check_name("queue", spec.queue))
    _checked(spec, lambda: check_int("priority", spec.priority, *INT32))
    _expect(spec, isinstance(spec.enabled, bool), f"enabled must be a bool, got {spec.enabled!r}")
    _one_of(spec, "overlap", tuple(option.value for option in Overlap))
    _one_of(spec, "catch_up", ("none", "latest", "all"))
    _one_of(spec, "dst", ("skip", "shift"))
    limit_ok = _is_int(limit) and 1 <= limit <= MAX_CATCH_UP_LIMIT
    _expect(spec, limit_ok, f"catch_up_limit must be 1-{MAX_CATCH_UP_LIMIT}, got {limit!r}")
    object.__setattr__(spec, "overlap", Overlap(spec.overlap))
    if not isinstance(spec.args, Mapping) or not all(isinstance(k, str) for k in spec.args):
        raise ArgsNotJSON(f"schedule {spec.name!r}: args must be a dict with string keys")
    try:
        # A private, canonical copy: later changes to the caller's dict cannot reach the spec.
        # Refused like a job's args: not JSON, or a NUL / lone surrogate no store keeps.
        object.__setattr__(spec, "args", dump_args(spec.task, dict(spec.args)))
    except ArgsNotJSON as exc:
        raise ArgsNotJSON(f"schedule {spec.name!r}: {exc}") from None
    except RecursionError:
        raise ArgsNotJSON(f"schedule {spec.name!r}: args are nested too deeply") from None


def _validate_trigger(spec: ScheduleSpec) -> None:
    if (spec.cron is None) == (spec.every is None):
        raise _invalid(spec.name, "give exactly one of cron= or every=")
    if spec.cron is not None:
        if not isinstance(spec.cron, str) or len(spec.cron) > CRON_MAX:
            raise _invalid(spec.name, f"cron must be text of at most {CRON_MAX} characters, "
                           f"got {ascii(spec.cron)[:60]}")
        try:
            check_cron(spec.cron)
        except ValueError as exc:
            raise _invalid(spec.name, str(exc)) from None
    else:
        _number(spec, "every", 1.0)
    try:
        if not isinstance(spec.tz, str) or len(spec.tz) > NAME_MAX:
            raise ValueError(spec.tz)
        ZoneInfo(spec.tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise _invalid(spec.name, f"unknown time zone {ascii(spec.tz)[:60]} (use an IANA "
                       "name)") from None
    anchor: object = spec.anchor
    if isinstance(anchor, str):
        try:
            anchor = datetime.fromisoformat(anchor)
        except ValueError:
            raise _invalid(spec.name, f"anchor {ascii(anchor)[:60]} is not an ISO 8601 "
                           "datetime") from None
    if anchor is not None:
        if not isinstance(anchor, datetime) or anchor.utcoffset() is None:
            raise _invalid(spec.name, f"anchor must be a timezone-aware datetime, got {anchor!r}")
        try:
            object.__setattr__(spec, "anchor", anchor.astimezone(UTC))
        except OverflowError:
            raise _invalid(spec.name, f"anchor {anchor.isoformat()} is out of range") from None


def _validate_timing(spec: ScheduleSpec) -> None:
    if spec.misfire_grace is not None:
        _number(spec, "misfire_grace", 0.0)
    jitter, period = _number(spec, "jitter", 0.0), period_hint(spec)
    if jitter >= period:
        raise _invalid(spec.name, f"jitter ({jitter:g} s) must be below the period ({period:g} s)")


def _aware(value: datetime, label: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{label} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _interval_index(spec: ScheduleSpec, moment: datetime) -> tuple[int, int]:
    """(k of the newest slot at or before ``moment``, the step in microseconds)."""
    step = round(cast(float, spec.every) * 1_000_000)
    return (moment - (spec.anchor or EPOCH)) // _US // step, step


def _iter_slots(spec: ScheduleSpec, after: datetime) -> Iterator[datetime]:
    """Every slot strictly after ``after`` (aware UTC), in increasing order."""
    if spec.every is not None:
        k, step = _interval_index(spec, after)
        while True:
            k += 1
            yield (spec.anchor or EPOCH) + timedelta(microseconds=k * step)
    last = after
    # Wall times read on the fall-back day can map before ``after``, and a DST gap maps several
    # wall times to one instant: keep only instants that move forward.
    for instant in cron_instants(cast(str, spec.cron), spec.tz, spec.dst, after):
        if instant > last:
            last = instant
            yield instant


def next_slot(spec: ScheduleSpec, after: datetime) -> datetime:
    """The first slot strictly after ``after``."""
    for slot in _iter_slots(spec, _aware(after, "after")):
        return slot
    raise _invalid(spec.name, f"cron {spec.cron!r} has no slot within 50 years after {after}")


def slots_between(
    spec: ScheduleSpec, after: datetime | None, until: datetime
) -> Iterator[datetime]:
    """Slots in ``(after, until]``, oldest first; ``after=None`` starts at the Unix epoch."""
    start = EPOCH if after is None else _aware(after, "after")
    end = _aware(until, "until")
    return takewhile(lambda slot: slot <= end, _iter_slots(spec, start))


def latest_slot(spec: ScheduleSpec, at: datetime) -> datetime | None:
    """The newest slot at or before ``at`` (None if there is none within ~400 days)."""
    at = _aware(at, "at")
    span = timedelta(seconds=period_hint(spec))
    for _ in range(20):
        found = None
        for found in slots_between(spec, at - span, at):  # noqa: B007 - we want the last
            pass
        if found is not None:
            return found
        span *= 2
        if span > timedelta(days=400):
            return None
    return None


def expected_count(spec: ScheduleSpec, start: datetime, end: datetime) -> int:
    """How many slots fall in ``(start, end]``; O(1) for intervals, O(slots) for crons."""
    start, end = _aware(start, "start"), _aware(end, "end")
    if end <= start:
        return 0
    if spec.every is not None:
        return _interval_index(spec, end)[0] - _interval_index(spec, start)[0]
    return sum(1 for _ in slots_between(spec, start, end))


def period_hint(spec: ScheduleSpec) -> float:
    """Seconds between consecutive slots; for a cron, the smallest gap among its first slots
    on a DST-free calendar (so a weekday job at 09:00 has a one-day period)."""
    if spec.every is not None:
        return spec.every
    return cron_period(cast(str, spec.cron))


def _jitter_us(spec: ScheduleSpec, slot: datetime) -> int:
    span = int(spec.jitter * 1_000_000)
    if span <= 0:
        return 0
    key = f"{spec.name}\x1f{_aware(slot, 'slot').isoformat()}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % span


def jitter_for(spec: ScheduleSpec, slot: datetime) -> float:
    """Seconds in ``[0, jitter)`` this slot's run is delayed by; the same in every process."""
    return _jitter_us(spec, slot) / 1_000_000


def due_at(spec: ScheduleSpec, slot: datetime) -> datetime:
    """When the job of ``slot`` becomes runnable: the slot plus its jitter."""
    return _aware(slot, "slot") + timedelta(microseconds=_jitter_us(spec, slot))


def plan_slots(
    spec: ScheduleSpec,
    cursor: datetime | None,
    now: datetime,
    created_at: datetime,
    *,
    limit: int = MAX_SLOTS_PER_PLAN,
) -> SlotPlan:
    """Decide the outcome of the slots in ``(cursor, now]``; see the module docstring."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    now = _aware(now, "now")
    start = _aware(created_at, "created_at") if cursor is None else _aware(cursor, "cursor")
    if not spec.enabled:
        return SlotPlan([], [], [], new_cursor=max(start, now))
    keep = {"none": 0, "latest": 1, "all": spec.catch_up_limit}[spec.catch_up]
    window = list(islice(slots_between(spec, start, now), limit + max(keep, 1)))
    grace = timedelta(seconds=spec.effective_misfire_grace)
    late = [now - due_at(spec, slot) > grace for slot in window]
    # missed_after[i]: missed slots after window[i], counting the look-ahead past the batch.
    # With "latest" an on-time slot after a missed one covers it too: count every later slot.
    missed_after, count = [0] * len(window), 0
    for index in range(len(window) - 1, -1, -1):
        missed_after[index] = count
        count += 1 if spec.catch_up == "latest" else late[index]
    plan = SlotPlan([], [], [], new_cursor=window[:limit][-1] if window else cursor)
    for index, slot in enumerate(window[:limit]):
        if not late[index] or missed_after[index] < keep:
            plan.run.append(slot)
        else:
            (plan.coalesced if keep else plan.missed).append(slot)
    return replace(plan, more=len(window) > limit)
