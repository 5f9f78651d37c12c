"""Cron expressions read on a wall clock: validation with errors that name the field to fix, the
period, and the real instants of each wall time through daylight-saving changes. Pure functions
on cronsim; :mod:`oncely.schedules` turns these instants into slots.

Daylight saving time
====================

A cron whose hour field covers every hour (``35 * * * *``, ``*/10 * * * * *``) keeps a real-time
cadence: it fires at each real instant whose local time matches. Wall times skipped by a spring
forward never happen (no real hour is lost); the hour repeated by a fall back fires twice, at two
UTC instants (01:35 EDT and 01:35 EST in America/New_York). ``dst`` does not apply.

A cron pinned to particular hours (``30 2 * * *``, ``0 9-17 * * 1-5``) names wall-clock times:

* a local time that does not exist (02:30 on the spring-forward day in Europe/Berlin) follows
  ``dst``: ``"shift"`` (default) fires once at the first instant after the gap (03:00 local),
  however many of the cron's times fall into the gap, merged with a slot the cron has at that
  instant anyway; ``"skip"`` fires nothing for those times that day.
* a local time that happens twice (01:30 on the fall-back day in America/New_York) fires once, at
  its first occurrence (01:30 EDT, the earlier UTC instant).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from itertools import islice, pairwise
from typing import cast
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

_FIELD_RULES = {  # cronsim's field names, in order
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31, L or LW",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT, optionally with L or #1-#5",
}
# Naive on purpose: the period of a cron is measured on a plain calendar, free of DST.
_PERIOD_REFERENCE = datetime(2000, 1, 1)
_PERIOD_SAMPLE = 32


def check_cron(expr: object) -> None:
    """Raise ValueError naming the field to fix when ``expr`` is not a usable cron."""
    parts = expr.split() if isinstance(expr, str) else []
    if len(parts) not in (5, 6):
        raise ValueError(
            f"invalid cron {expr!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week) or 6 with seconds first, got {len(parts)}",
        )
    try:
        CronSim(cast(str, expr), _PERIOD_REFERENCE)
        cron_period(cast(str, expr))
    except (CronSimError, ValueError) as exc:
        raise ValueError(f"invalid cron {expr!r}: {_explain(parts, str(exc))}") from None


def _explain(parts: list[str], message: str) -> str:
    field_name, names = message.removeprefix("Bad "), list(_FIELD_RULES)
    index = names.index(field_name) - (6 - len(parts)) if field_name in names else -1
    if index < 0:
        return message
    text = parts[index]
    if field_name == "day-of-month":
        any_month = [*parts]
        any_month[index + 1] = "*"
        try:
            CronSim(" ".join(any_month), _PERIOD_REFERENCE)
            return f"day-of-month {text!r} never occurs in month {parts[index + 1]!r}"
        except (CronSimError, ValueError):
            pass
    return f"{field_name} must be {_FIELD_RULES[field_name]} (got {text!r})"


def _cronsim(expr: str, start: datetime) -> Iterator[datetime]:
    # cronsim gives up (StopIteration) after 50 years without a match; that ends our iteration.
    it = CronSim(expr, start)
    while (value := next(it, None)) is not None:
        yield value


@lru_cache(maxsize=512)
def cron_period(expr: str) -> float:
    sample = list(islice(_cronsim(expr, _PERIOD_REFERENCE), _PERIOD_SAMPLE))
    if len(sample) < 2:
        raise ValueError("it never fires")
    return min((later - earlier).total_seconds() for earlier, later in pairwise(sample))


@lru_cache(maxsize=512)
def _real_time_cadence(expr: str) -> bool:
    """True for crons that fire in every hour: they follow real time through DST changes."""
    return bool(CronSim(expr, _PERIOD_REFERENCE).hours == set(range(24)))


def _gap_end(wall: datetime, tz: ZoneInfo) -> datetime:
    """The first real instant after the DST gap that swallowed the nonexistent ``wall``."""
    # The two fold readings of a nonexistent time bracket the transition; bisect to the second.
    low, high = sorted(int(wall.replace(tzinfo=tz, fold=fold).timestamp()) for fold in (0, 1))
    offset_after = datetime.fromtimestamp(high, tz).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset_after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _real_instants(wall: datetime, tz: ZoneInfo) -> list[datetime]:
    """The instants whose local time in ``tz`` is the naive ``wall``: none in a DST gap, two in a
    fold (oldest first), otherwise one."""
    readings = {wall.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1)}
    return sorted(t for t in readings if t.astimezone(tz).replace(tzinfo=None) == wall)


def cron_instants(expr: str, tz_name: str, dst: str, after: datetime) -> Iterator[datetime]:
    """Candidate instants of ``expr`` read on the wall clock of ``tz_name``, from ``after`` on:
    possibly out of order or repeated around DST changes (the caller keeps those moving forward)."""
    tz = ZoneInfo(tz_name)
    real_time = _real_time_cadence(expr)
    start = after.astimezone(tz).replace(tzinfo=None)
    readings = _real_instants(start, tz)
    # In a fold, wall times before ``after``'s own can still recur after it: start at the fold.
    start -= readings[-1] - readings[0]
    repeats: list[datetime] = []  # second occurrences, due once the fold's first pass is over
    for wall in _cronsim(expr, start):
        readings = _real_instants(wall, tz)
        if real_time and len(readings) == 2:
            yield readings[0]
            repeats.append(readings[1])
            continue
        yield from repeats
        repeats.clear()
        if readings:
            yield readings[0]
        elif not real_time and dst == "shift":
            yield _gap_end(wall, tz)
    yield from repeats
