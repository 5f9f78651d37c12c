"""Billing-cycle maths, property-based over every anchor day and date (month ends, leap years,
March 29-31), plus the reference's own examples."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oncely_billing.cycle import (
    billing_cycle,
    clamped,
    cycle_for_day,
    cycles_by_anchor_day,
    earliest_cycle_start,
)

anchors = st.integers(min_value=1, max_value=31)
days = st.dates(min_value=date(1999, 1, 1), max_value=date(2101, 12, 31))
month_ends = st.builds(
    lambda year, month, back: date(year, month, calendar.monthrange(year, month)[1])
    - timedelta(days=back),
    st.integers(1999, 2101), st.integers(1, 12), st.integers(0, 3),
)
interesting_days = st.one_of(days, month_ends)


@settings(max_examples=400, deadline=None)
@given(anchors, interesting_days)
def test_cycle_contains_today_and_starts_on_the_clamped_anchor(anchor: int, today: date) -> None:
    cycle = cycle_for_day(anchor, today)
    assert cycle.start <= today < cycle.end
    for boundary in (cycle.start, cycle.end):
        month_length = calendar.monthrange(boundary.year, boundary.month)[1]
        assert boundary.day == min(anchor, month_length)
    assert 28 <= cycle.days <= 31
    # the end is the next month's clamped anchor: cycles never skip a month
    months = (cycle.end.year * 12 + cycle.end.month) - (cycle.start.year * 12 + cycle.start.month)
    assert months == 1


@settings(max_examples=300, deadline=None)
@given(anchors, interesting_days)
def test_cycles_tile_the_calendar(anchor: int, today: date) -> None:
    cycle = cycle_for_day(anchor, today)
    assert cycle_for_day(anchor, cycle.start) == cycle
    assert cycle_for_day(anchor, cycle.end - timedelta(days=1)) == cycle
    following = cycle_for_day(anchor, cycle.end)
    assert following.start == cycle.end
    previous = cycle_for_day(anchor, cycle.start - timedelta(days=1))
    assert previous.end == cycle.start


@settings(max_examples=200, deadline=None)
@given(anchors, st.integers(1999, 2100))
def test_every_day_of_a_year_is_in_exactly_one_cycle(anchor: int, year: int) -> None:
    day, seen_starts = date(year, 1, 1), []
    while day.year == year:
        cycle = cycle_for_day(anchor, day)
        if not seen_starts or seen_starts[-1] != cycle.start:
            seen_starts.append(cycle.start)
        day += timedelta(days=1)
    assert seen_starts == sorted(set(seen_starts))
    assert len(seen_starts) in (12, 13)


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC)), interesting_days)
def test_anchor_instant_is_truncated_to_the_utc_day(anchor: datetime, today: date) -> None:
    from zoneinfo import ZoneInfo

    local = anchor.astimezone(ZoneInfo("Pacific/Kiritimati"))  # UTC+14: another calendar day
    assert billing_cycle(local, datetime(1990, 1, 1, tzinfo=UTC), today) == cycle_for_day(
        anchor.day, today)
    # without an anchor, the creation date's UTC day anchors the cycle
    assert billing_cycle(None, local, today) == cycle_for_day(anchor.day, today)


@pytest.mark.parametrize(("anchor", "today", "start", "end"), [
    (31, date(2026, 3, 29), date(2026, 2, 28), date(2026, 3, 31)),
    (31, date(2026, 3, 30), date(2026, 2, 28), date(2026, 3, 31)),
    (31, date(2026, 3, 31), date(2026, 3, 31), date(2026, 4, 30)),
    (30, date(2026, 3, 29), date(2026, 2, 28), date(2026, 3, 30)),
    (29, date(2026, 3, 28), date(2026, 2, 28), date(2026, 3, 29)),
    (29, date(2026, 3, 29), date(2026, 3, 29), date(2026, 4, 29)),
    (29, date(2024, 2, 29), date(2024, 2, 29), date(2024, 3, 29)),
    (31, date(2024, 3, 1), date(2024, 2, 29), date(2024, 3, 31)),
    (30, date(2024, 2, 29), date(2024, 2, 29), date(2024, 3, 30)),
    (31, date(2026, 4, 30), date(2026, 4, 30), date(2026, 5, 31)),
    (31, date(2026, 5, 1), date(2026, 4, 30), date(2026, 5, 31)),
    (15, date(2026, 1, 14), date(2025, 12, 15), date(2026, 1, 15)),
    (1, date(2026, 1, 1), date(2026, 1, 1), date(2026, 2, 1)),
    (31, date(2025, 12, 31), date(2025, 12, 31), date(2026, 1, 31)),
])
def test_reference_examples(anchor: int, today: date, start: date, end: date) -> None:
    cycle = cycle_for_day(anchor, today)
    assert (cycle.start, cycle.end) == (start, end)


def test_march_29_to_31_are_never_skipped() -> None:
    """The reference system looked back "previous month's length" days and lost these orgs."""
    for year in (2023, 2024, 2025, 2026):
        for anchor in (29, 30, 31):
            for day in (29, 30, 31):
                today = date(year, 3, day)
                cycle = cycle_for_day(anchor, today)
                assert today in cycle


def test_the_31_row_table_and_the_earliest_start() -> None:
    today = date(2026, 3, 30)
    table = cycles_by_anchor_day(today)
    assert sorted(table) == list(range(1, 32))
    assert earliest_cycle_start(today) == min(c.start for c in table.values())
    assert clamped(2026, 2, 31) == date(2026, 2, 28)
    with pytest.raises(ValueError):
        cycle_for_day(0, today)
