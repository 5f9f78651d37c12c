"""Billing-cycle arithmetic (pure functions, UTC days).

An organization's cycle is anchored on a day of the month: the day of its billing-cycle anchor,
or of its creation date when it has none, both truncated to the UTC day. The cycle containing a
day ``today`` starts on the anchor's day-of-month in today's month, clamped to that month's
length (anchor 31 → 30 April, 28 or 29 February); if that date is after ``today``, it starts on
the previous month's clamped day. It ends where the next one starts (the "reset date").

So consecutive cycles tile the calendar: every day belongs to exactly one cycle, and no day is
skipped at month ends (unlike a fixed look-back of "previous month's length" days, which loses
days on March 29-31). The cycle depends only on the anchor's day-of-month and ``today``; the
free-tier job uses that to evaluate every organization with a 31-row table.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime


@dataclass(frozen=True)
class Cycle:
    start: date  # first day of the cycle
    end: date  # first day of the next cycle: the reset date

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.start <= day < self.end

    @property
    def days(self) -> int:
        return (self.end - self.start).days


def utc_day(instant: datetime | date) -> date:
    """The UTC day of an instant (a naive datetime is taken as UTC); a date is itself."""
    if isinstance(instant, datetime):
        if instant.tzinfo is not None:
            instant = instant.astimezone(UTC)
        return instant.date()
    return instant


def clamped(year: int, month: int, anchor_day: int) -> date:
    """``anchor_day`` of that month, or the month's last day if the month is shorter."""
    return date(year, month, min(anchor_day, calendar.monthrange(year, month)[1]))


def _shift(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def cycle_for_day(anchor_day: int, today: date) -> Cycle:
    """The cycle containing ``today`` for an anchor on ``anchor_day`` (1-31) of the month."""
    if not 1 <= anchor_day <= 31:
        raise ValueError(f"anchor day must be 1..31, got {anchor_day}")
    start = clamped(today.year, today.month, anchor_day)
    year, month = today.year, today.month
    if start > today:
        year, month = _shift(year, month, -1)
        start = clamped(year, month, anchor_day)
    next_year, next_month = _shift(year, month, 1)
    return Cycle(start, clamped(next_year, next_month, anchor_day))


def anchor_day_of(anchor: datetime | date | None, created_at: datetime | date) -> int:
    """The day-of-month a cycle is anchored on: the anchor's, else the creation date's (UTC)."""
    return utc_day(anchor if anchor is not None else created_at).day


def billing_cycle(
    anchor: datetime | date | None, created_at: datetime | date, now: datetime | date
) -> Cycle:
    """The current billing cycle of an organization at ``now``."""
    return cycle_for_day(anchor_day_of(anchor, created_at), utc_day(now))


def cycles_by_anchor_day(today: date) -> dict[int, Cycle]:
    """The cycle containing ``today`` for each anchor day 1-31 (what set-based SQL joins on)."""
    return {day: cycle_for_day(day, today) for day in range(1, 32)}


def earliest_cycle_start(today: date) -> date:
    """The earliest start among all anchor days: a full recount reads from here."""
    return min(cycle.start for cycle in cycles_by_anchor_day(today).values())
