import itertools
import json
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import given, settings
from hypothesis import strategies as st

from oncely.errors import ArgsNotJSON, ConfigError, InvalidSchedule
from oncely.schedules import (
    EPOCH,
    MAX_SLOTS_PER_PLAN,
    ScheduleSpec,
    due_at,
    expected_count,
    jitter_for,
    next_slot,
    period_hint,
    plan_slots,
    slots_between,
)
from oncely.types import Overlap
from oncely.validate import DELAY_MAX

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # a Monday


def at(*parts: int, tz: str = "UTC") -> datetime:
    return datetime(*parts, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def cron(expr: str, **options) -> ScheduleSpec:
    return ScheduleSpec.create("job", "task", cron=expr, **options)


def every(seconds: float, **options) -> ScheduleSpec:
    return ScheduleSpec.create("job", "task", every=seconds, **options)


def day_slots(spec: ScheduleSpec, day: date) -> list[datetime]:
    """The slots whose local date (in the spec's zone) is ``day``."""
    tz = ZoneInfo(spec.tz)
    start = datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)
    window = slots_between(spec, start - timedelta(seconds=1), start + timedelta(hours=26))
    return [slot for slot in window if slot.astimezone(tz).date() == day]


def local(slot: datetime, tz: str) -> str:
    return slot.astimezone(ZoneInfo(tz)).strftime("%H:%M%z")


# cron ---------------------------------------------------------------------------------------


def test_five_field_cron_fires_strictly_after():
    spec = cron("*/15 * * * *")
    assert next_slot(spec, T0 + timedelta(minutes=7)) == T0 + timedelta(minutes=15)
    assert next_slot(spec, T0 + timedelta(minutes=15)) == T0 + timedelta(minutes=30)
    assert next_slot(spec, T0 + timedelta(minutes=15, microseconds=1)) == T0 + timedelta(minutes=30)
    assert next_slot(spec, T0 - timedelta(microseconds=1)) == T0


def test_six_field_cron_has_seconds():
    spec = cron("*/10 * * * * *")
    assert next_slot(spec, T0 + timedelta(seconds=5)) == T0 + timedelta(seconds=10)
    assert list(slots_between(spec, T0, T0 + timedelta(seconds=30))) == [
        T0 + timedelta(seconds=s) for s in (10, 20, 30)
    ]
    assert next_slot(cron("30 0 12 * * *"), T0) == T0.replace(hour=12, second=30)


def test_slots_are_aware_utc():
    slot = next_slot(cron("0 9 * * *", tz="Asia/Tokyo"), T0)
    assert slot.tzinfo is UTC
    assert slot == at(2026, 1, 6, 9, tz="Asia/Tokyo")


def test_cron_follows_the_wall_clock_of_its_zone():
    spec = cron("0 9 * * *", tz="Europe/Berlin")
    assert next_slot(spec, at(2026, 1, 5)) == at(2026, 1, 5, 8)  # CET, UTC+1
    assert next_slot(spec, at(2026, 7, 6)) == at(2026, 7, 6, 7)  # CEST, UTC+2


def test_weekday_cron_skips_weekends():
    slots = list(slots_between(cron("0 9 * * 1-5"), T0, T0 + timedelta(days=7)))
    assert [slot.weekday() for slot in slots] == [1, 2, 3, 4, 0]


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        next_slot(cron("* * * * *"), datetime(2026, 1, 1))


# intervals ----------------------------------------------------------------------------------


def test_intervals_are_aligned_to_the_epoch():
    assert next_slot(every(60), T0 + timedelta(seconds=1)) == T0 + timedelta(minutes=1)
    slot = next_slot(every(90), T0)
    assert (slot - EPOCH).total_seconds() % 90 == 0
    assert T0 < slot <= T0 + timedelta(seconds=90)


def test_one_second_interval():
    slots = list(slots_between(every(1), T0, T0 + timedelta(seconds=5)))
    assert slots == [T0 + timedelta(seconds=s) for s in range(1, 6)]
    assert next_slot(every(1), T0 + timedelta(milliseconds=300)) == T0 + timedelta(seconds=1)


def test_every_accepts_timedelta_and_fractions():
    assert every(timedelta(minutes=5)).every == 300.0
    slots = list(slots_between(every(1.5), EPOCH, EPOCH + timedelta(seconds=4.5)))
    assert slots == [EPOCH + timedelta(seconds=s) for s in (1.5, 3.0, 4.5)]


def test_interval_anchor_sets_the_phase():
    spec = every(3600, anchor="2026-01-01T00:15:00+00:00")
    assert next_slot(spec, T0) == T0 + timedelta(minutes=15)
    assert next_slot(spec, T0 - timedelta(days=400)).minute == 15  # slots extend before the anchor


def test_intervals_ignore_time_zones_and_dst():
    spring = at(2026, 3, 29, tz="Europe/Berlin")
    spec = every(3600, tz="Europe/Berlin")
    slots = list(slots_between(spec, spring, spring + timedelta(hours=6)))
    assert all(
        later - earlier == timedelta(hours=1) for earlier, later in itertools.pairwise(slots)
    )


def test_slots_between_without_lower_bound_starts_at_the_epoch():
    assert list(slots_between(every(60), None, EPOCH + timedelta(minutes=2))) == [
        EPOCH + timedelta(minutes=1),
        EPOCH + timedelta(minutes=2),
    ]


# validation ---------------------------------------------------------------------------------

SECONDS = "a finite number of seconds"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "schedule 'job': invalid cron '61 * * * *': minute must be 0-59"),
        ({"cron": "0 25 * * *"}, "hour must be 0-23 (got '25')"),
        ({"cron": "0 0 * * 8"}, "day-of-week must be 0-7 or SUN-SAT"),
        ({"cron": "0 0 0 * * * *"}, "expected 5 fields"),
        ({"cron": "@daily"}, "expected 5 fields"),
        ({"cron": "0 0 30 2 *"}, "day-of-month '30' never occurs in month '2'"),
        ({"cron": "61 * * * * *"}, "second must be 0-59 (got '61')"),
        ({"cron": "* * * * *", "every": 60}, "give exactly one of cron= or every="),
        ({}, "give exactly one of cron= or every="),
        ({"every": 0.5}, f"every must be {SECONDS} from 1 to {DELAY_MAX:.0f} (100 years), got 0.5"),
        ({"every": float("inf")}, "every must be a finite number of seconds"),
        ({"every": float("nan")}, "every must be a finite number of seconds from 1"),
        ({"every": 1e300}, "every must be a finite number of seconds from 1 to 3162240000"),
        ({"every": 10**400}, "every must be a finite number of seconds from 1"),
        ({"every": DELAY_MAX + 1}, "got 3162240001.0"),
        ({"every": "60"}, "every must be a finite number of seconds from 1"),
        ({"every": True}, "every must be a finite number of seconds from 1"),
        ({"every": 60, "queue": "\x1b[31mred"}, "queue name '\\x1b[31mred' is invalid"),
        ({"every": 60, "queue": "bad queue"}, "queue name 'bad queue' is invalid"),
        ({"every": 60, "queue": "q" * 9000}, "queue name 'qqqq"),
        ({"every": 60, "queue": ""}, "queue name '' is invalid"),
        ({"every": 60, "priority": 10**20}, "priority must be a whole number from -2147483648"),
        ({"every": 60, "priority": 1.5}, "priority must be a whole number"),
        ({"every": 60, "tz": "a" * 9000}, "unknown time zone 'aaaa"),
        ({"every": 60, "tz": "\x00"}, "unknown time zone '\\x00'"),
        ({"cron": "* " * 300}, "cron must be text of at most 500 characters"),
        ({"every": 60, "anchor": "0001-01-01T00:00:00+14:00"}, "is out of range"),
        ({"every": 60, "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"every": 60, "overlap": "sometimes"}, "overlap must be one of skip, buffer_one, allow"),
        ({"every": 60, "catch_up": "some"}, "catch_up must be one of none, latest, all"),
        ({"every": 60, "dst": "ignore"}, "dst must be one of skip, shift"),
        ({"every": 60, "catch_up_limit": 0}, "catch_up_limit must be 1-"),
        ({"every": 60, "jitter": -1}, "jitter must be a finite number of seconds from 0"),
        ({"every": 60, "jitter": float("nan")}, "jitter must be a finite number of seconds"),
        ({"every": 60, "jitter": 1e300}, "jitter must be a finite number of seconds"),
        ({"every": 60, "jitter": 60}, "jitter (60 s) must be below the period (60 s)"),
        ({"cron": "*/5 * * * *", "jitter": 300}, "must be below the period (300 s)"),
        ({"every": 60, "misfire_grace": -5}, "misfire_grace must be a finite number of seconds"),
        ({"every": 60, "misfire_grace": 1e300}, "misfire_grace must be a finite number of seconds "
         "from 0 to 3162240000 (100 years), got 1e+300"),
        ({"every": 60, "misfire_grace": float("inf")}, "misfire_grace must be a finite number"),
        ({"every": 60, "anchor": datetime(2026, 1, 1)}, "anchor must be a timezone-aware"),
        ({"every": 60, "anchor": "soon"}, "anchor 'soon' is not an ISO 8601 datetime"),
    ],
)
def test_invalid_schedules_say_what_to_fix(options, message):
    with pytest.raises(InvalidSchedule) as caught:
        ScheduleSpec.create("job", "task", **options)
    text = str(caught.value)
    assert message in text
    assert text.startswith("schedule 'job': ")
    assert "\n" not in text
    assert isinstance(caught.value, ConfigError)


def test_args_must_be_json():
    with pytest.raises(ArgsNotJSON, match="schedule 'job': arguments of 'task' must be JSON"):
        every(60, args={"when": datetime.now(UTC)})
    for bad in ("a\x00b", "\ud800", "\udcff"):  # neither store keeps these (PostgreSQL)
        with pytest.raises(ArgsNotJSON, match="holds a NUL character or a lone surrogate"):
            every(60, args={"note": bad})
        with pytest.raises(ArgsNotJSON, match="holds a NUL character or a lone surrogate"):
            every(60, args={"nested": [{bad: 1}]})
    with pytest.raises(ArgsNotJSON, match="string keys"):
        ScheduleSpec("job", "task", every=60, args={1: "x"})  # type: ignore[dict-item]


def test_args_are_copied():
    args = {"orgs": [1, 2]}
    spec = every(60, args=args)
    args["orgs"].append(3)
    assert spec.args == {"orgs": [1, 2]}


# DST ----------------------------------------------------------------------------------------

# zone, spring-forward day, the end of its gap in UTC (03:00 local, after the jump),
# fall-back day, a repeated wall time, its first occurrence in UTC
DST_ZONES = [
    (
        "Europe/Berlin",
        date(2024, 3, 31),
        at(2024, 3, 31, 1),
        date(2024, 10, 27),
        "30 2",
        at(2024, 10, 27, 0, 30),
    ),
    (
        "America/New_York",
        date(2024, 3, 10),
        at(2024, 3, 10, 7),
        date(2024, 11, 3),
        "30 1",
        at(2024, 11, 3, 5, 30),
    ),
]


@pytest.mark.parametrize(("tz", "spring", "gap_end", "fall", "repeated", "first"), DST_ZONES)
def test_nonexistent_time_shifts_to_the_end_of_the_gap_once(
    tz, spring, gap_end, fall, repeated, first
):
    assert local(gap_end, tz).startswith("03:00")
    for expr in ("30 2 * * *", "*/20 2 * * *", "0 2,3 * * *", "0 0 2 * * *"):
        assert day_slots(cron(expr, tz=tz, dst="shift"), spring) == [gap_end], expr


@pytest.mark.parametrize(("tz", "spring", "gap_end", "fall", "repeated", "first"), DST_ZONES)
def test_nonexistent_time_is_skipped_with_skip(tz, spring, gap_end, fall, repeated, first):
    for expr in ("30 2 * * *", "*/20 2 * * *"):
        spec = cron(expr, tz=tz, dst="skip")
        assert day_slots(spec, spring) == [], expr
        day_after = day_slots(spec, spring + timedelta(days=1))
        assert local(day_after[0], tz).startswith("02:"), expr
    merged = cron("0 2,3 * * *", tz=tz, dst="skip")
    assert day_slots(merged, spring) == [gap_end]  # 03:00 is a slot of its own


@pytest.mark.parametrize("dst", ["skip", "shift"])
@pytest.mark.parametrize(("tz", "spring", "gap_end", "fall", "repeated", "first"), DST_ZONES)
def test_repeated_time_fires_once_at_its_first_occurrence(
    tz, spring, gap_end, fall, repeated, first, dst
):
    spec = cron(f"{repeated} * * *", tz=tz, dst=dst)
    assert day_slots(spec, fall) == [first]
    second_occurrence = first + timedelta(hours=1)
    assert next_slot(spec, first).astimezone(ZoneInfo(tz)).date() == fall + timedelta(days=1)
    assert next_slot(spec, second_occurrence) == next_slot(spec, first)


@pytest.mark.parametrize("dst", ["skip", "shift"])
@pytest.mark.parametrize(("tz", "spring", "gap_end", "fall", "repeated", "first"), DST_ZONES)
def test_hourly_cron_fires_every_real_hour(tz, spring, gap_end, fall, repeated, first, dst):
    spec = cron("35 * * * *", tz=tz, dst=dst)
    for day, hours in ((spring, 23), (fall, 25)):
        slots = day_slots(spec, day)
        assert len(slots) == hours
        assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(slots))
        assert all(slot.astimezone(ZoneInfo(tz)).minute == 35 for slot in slots)
    minute_of_repeat = first.replace(minute=35)
    assert next_slot(spec, minute_of_repeat) == minute_of_repeat + timedelta(hours=1)
    after_it = minute_of_repeat + timedelta(minutes=5)
    assert next_slot(spec, after_it) == minute_of_repeat + timedelta(hours=1)


@pytest.mark.parametrize("expr", ["35 * * * *", "*/15 * * * 0,6"])
@pytest.mark.parametrize(
    ("tz", "start"),
    [
        ("Europe/Berlin", at(2024, 3, 30, 12)),
        ("America/New_York", at(2024, 11, 2, 12)),
        ("Australia/Lord_Howe", at(2024, 4, 5, 12)),  # clocks go back 30 minutes
        ("Australia/Lord_Howe", at(2024, 10, 5, 6)),  # and forward 30 minutes
        ("America/Havana", at(2024, 3, 9, 12)),  # DST starts at midnight
    ],
)
def test_real_time_cadence_matches_a_minute_by_minute_scan(expr, tz, start):
    spec, zone = cron(expr, tz=tz), ZoneInfo(tz)
    end = start + timedelta(hours=30)
    # The wall-clock times the expression matches, from cronsim on a plain calendar...
    first_wall = start.astimezone(zone).replace(tzinfo=None) - timedelta(hours=3)
    walls = set(
        itertools.takewhile(
            lambda w: w < first_wall + timedelta(hours=36), CronSim(expr, first_wall)
        )
    )
    # ...and every real minute showing one of them.
    real_minutes = (start + timedelta(minutes=m) for m in range(1, 30 * 60 + 1))
    expected = [t for t in real_minutes if t.astimezone(zone).replace(tzinfo=None) in walls]
    assert list(slots_between(spec, start, end)) == expected


def test_six_field_every_ten_seconds_keeps_real_cadence_through_fall_back():
    spec = cron("*/10 * * * * *", tz="America/New_York")
    start = at(2024, 11, 3, 5, 59, 50)  # 01:59:50 EDT, 10 s before the clocks go back
    slots = list(slots_between(spec, start, start + timedelta(seconds=30)))
    assert slots == [start + timedelta(seconds=s) for s in (10, 20, 30)]


# period, grace, jitter ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "period"),
    [
        (every(90), 90),
        (cron("*/15 * * * *"), 900),
        (cron("*/7 * * * *"), 240),
        (cron("0 9 * * 1-5", tz="Europe/Berlin"), 86400),
        (cron("*/5 * * * * *"), 5),
        (cron("0 0 1 * *"), 28 * 86400),
    ],
)
def test_period_hint(spec, period):
    assert period_hint(spec) == period


def test_default_misfire_grace_is_the_period_capped_at_a_minute():
    assert every(5).effective_misfire_grace == 5
    assert every(3600).effective_misfire_grace == 60
    assert every(3600, misfire_grace=600).effective_misfire_grace == 600


def test_jitter_is_deterministic_and_in_range():
    spec = every(3600, jitter=120)
    slots = list(slots_between(spec, T0, T0 + timedelta(days=10)))
    offsets = [jitter_for(spec, slot) for slot in slots]
    assert offsets == [jitter_for(every(3600, jitter=120), slot) for slot in slots]
    assert all(0 <= offset < 120 for offset in offsets)
    assert len(set(offsets)) > len(offsets) // 2
    other = ScheduleSpec.create("other", "task", every=3600, jitter=120)
    assert jitter_for(other, slots[0]) != offsets[0]
    assert due_at(spec, slots[0]) == slots[0] + timedelta(seconds=offsets[0])
    assert jitter_for(every(3600), slots[0]) == 0.0
    assert due_at(every(3600), slots[0]) == slots[0]


@given(
    jitter=st.floats(min_value=0.000001, max_value=59.999),
    offset=st.integers(min_value=0, max_value=10**9),
)
def test_jitter_stays_in_range(jitter, offset):
    spec = every(60, jitter=jitter)
    slot = EPOCH + timedelta(minutes=offset)
    assert 0 <= jitter_for(spec, slot) < jitter
    assert slot <= due_at(spec, slot) < slot + timedelta(seconds=jitter)


# plan_slots ---------------------------------------------------------------------------------


def minutes(*values: int) -> list[datetime]:
    return [T0 + timedelta(minutes=value) for value in values]


def test_registration_never_enqueues_past_slots():
    spec = every(60)
    created = T0 + timedelta(seconds=30)
    assert plan_slots(spec, None, created, created_at=created).run == []
    plan = plan_slots(spec, None, created + timedelta(seconds=30), created_at=created)
    assert (plan.run, plan.new_cursor) == (minutes(1), T0 + timedelta(minutes=1))
    on_slot = plan_slots(spec, None, T0 + timedelta(minutes=1), created_at=T0)
    assert on_slot.run == minutes(1)  # created exactly on a slot: that slot is not its first


def test_empty_window_keeps_the_cursor():
    plan = plan_slots(every(60), T0, T0 + timedelta(seconds=59), created_at=T0)
    assert plan == plan_slots(every(60), T0, T0, created_at=T0)
    assert (plan.run, plan.missed, plan.coalesced, plan.new_cursor, plan.more) == (
        [], [], [], T0, False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("catch_up", "limit", "run", "missed", "coalesced"),
    [
        ("none", 100, [9, 10], [1, 2, 3, 4, 5, 6, 7, 8], []),
        # The on-time slots (9, 10) cover the missed ones: no extra run right before them.
        ("latest", 100, [9, 10], [], [1, 2, 3, 4, 5, 6, 7, 8]),
        ("all", 3, [6, 7, 8, 9, 10], [], [1, 2, 3, 4, 5]),
        ("all", 100, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [], []),
    ],
)
def test_catch_up_policies(catch_up, limit, run, missed, coalesced):
    spec = every(60, catch_up=catch_up, catch_up_limit=limit)  # grace: 60 s
    plan = plan_slots(spec, T0, T0 + timedelta(minutes=10), created_at=T0)
    assert plan.run == minutes(*run)
    assert plan.missed == minutes(*missed)
    assert plan.coalesced == minutes(*coalesced)
    assert plan.new_cursor == T0 + timedelta(minutes=10)
    assert not plan.more


def test_misfire_grace_boundary():
    spec = every(3600, misfire_grace=30, catch_up="none")
    slot = T0 + timedelta(hours=1)
    on_time = plan_slots(spec, T0, slot + timedelta(seconds=30), created_at=T0)
    late = plan_slots(spec, T0, slot + timedelta(seconds=30, microseconds=1), created_at=T0)
    assert (on_time.run, on_time.missed) == ([slot], [])
    assert (late.run, late.missed) == ([], [slot])


def test_lateness_counts_from_the_jittered_due_time():
    spec = every(3600, jitter=600, misfire_grace=0, catch_up="none")
    slot = T0 + timedelta(hours=1)
    due = due_at(spec, slot)
    assert due > slot
    assert plan_slots(spec, T0, due, created_at=T0).run == [slot]
    assert plan_slots(spec, T0, due + timedelta(microseconds=1), created_at=T0).missed == [slot]


def test_disabled_schedule_records_nothing_and_skips_the_pause():
    spec = every(60, enabled=False)
    now = T0 + timedelta(hours=5)
    plan = plan_slots(spec, T0, now, created_at=T0)
    assert (plan.run, plan.missed, plan.coalesced, plan.new_cursor) == ([], [], [], now)


def test_one_call_records_at_most_the_cap():
    spec = every(1, catch_up="latest")
    plan = plan_slots(spec, T0, T0 + timedelta(days=7), created_at=T0)
    assert len(plan.run) + len(plan.missed) + len(plan.coalesced) == MAX_SLOTS_PER_PLAN
    assert plan.more
    assert plan.new_cursor == T0 + timedelta(seconds=MAX_SLOTS_PER_PLAN)
    assert plan.run == []  # the newest missed slot lies beyond this batch


def drain(spec: ScheduleSpec, cursor: datetime, now: datetime, limit: int) -> dict[str, list]:
    outcomes: dict[str, list] = {"run": [], "missed": [], "coalesced": []}
    calls = 0
    while True:
        plan = plan_slots(spec, cursor, now, created_at=T0, limit=limit)
        calls += 1
        for name in outcomes:
            outcomes[name] += getattr(plan, name)
        assert plan.new_cursor is not None
        cursor = plan.new_cursor
        if not plan.more:
            assert calls < 100
            return outcomes


@pytest.mark.parametrize(
    ("catch_up", "catch_up_limit", "expected_runs"),
    [("none", 1, 11), ("latest", 1, 11), ("all", 50, 61), ("all", 5000, 3600)],
)
def test_batches_give_every_slot_exactly_one_outcome(catch_up, catch_up_limit, expected_runs):
    spec = every(1, catch_up=catch_up, catch_up_limit=catch_up_limit, misfire_grace=10)
    now = T0 + timedelta(hours=1)
    outcomes = drain(spec, T0, now, limit=250)
    recorded = outcomes["run"] + outcomes["missed"] + outcomes["coalesced"]
    assert sorted(recorded) == list(slots_between(spec, T0, now))
    assert len(set(recorded)) == 3600
    assert len(outcomes["run"]) == expected_runs
    on_time = [now - timedelta(seconds=s) for s in range(10, -1, -1)]  # at most 10 s late
    assert outcomes["run"][-11:] == on_time
    newest_missed = now - timedelta(seconds=11)
    assert newest_missed not in on_time
    # "latest" lets the on-time slots cover the backlog; "all" also runs the newest missed ones.
    assert (newest_missed in outcomes["run"]) == (catch_up == "all")


def drain_counts(spec: ScheduleSpec, now: datetime) -> dict[str, int]:
    counts = {"run": 0, "missed": 0, "coalesced": 0}
    cursor: datetime | None = T0
    for _ in range(100):
        plan = plan_slots(spec, cursor, now, created_at=T0)
        for name in counts:
            counts[name] += len(getattr(plan, name))
        cursor = plan.new_cursor
        if not plan.more:
            return counts
    raise AssertionError("did not drain")


def test_a_day_of_one_second_slots_drains_in_bounded_batches():
    spec = every(1, catch_up="latest")  # grace: 1 s, so the last two slots are on time
    outcomes = drain_counts(spec, T0 + timedelta(days=1))
    assert outcomes == {"run": 2, "missed": 0, "coalesced": 86400 - 2}


# counting -----------------------------------------------------------------------------------

CRON_FIELDS = st.tuples(
    st.sampled_from(["", "0 ", "*/20 ", "15,45 "]),
    st.sampled_from(["*", "*/15", "0", "30", "5,35", "0-10/5"]),
    st.sampled_from(["*", "2", "1,2", "*/6", "9-17", "0"]),
    st.sampled_from(["*", "*", "1", "15", "L"]),
    st.sampled_from(["*", "*", "3,10,11"]),
    st.sampled_from(["*", "*", "1-5", "0", "SUN"]),
)
ZONES = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe"]
)
STARTS = st.sampled_from(
    [at(2024, 3, 9, 18), at(2024, 3, 30, 20), at(2024, 10, 26, 20), at(2024, 11, 2, 18),
     at(2024, 4, 6, 6), at(2024, 10, 5, 6), at(2025, 6, 1)]
) | st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    fields=CRON_FIELDS,
    tz=ZONES,
    dst=st.sampled_from(["skip", "shift"]),
    start=STARTS,
    hours=st.floats(min_value=0, max_value=40),
)
def test_cron_expected_count_matches_the_slots(fields, tz, dst, start, hours):
    seconds, *rest = fields
    spec = cron(seconds + " ".join(rest), tz=tz, dst=dst)
    end = start + timedelta(hours=hours)
    slots = list(slots_between(spec, start, end))
    assert expected_count(spec, start, end) == len(slots)
    assert all(start < slot <= end and slot.tzinfo is UTC for slot in slots)
    assert all(earlier < later for earlier, later in itertools.pairwise(slots))
    for earlier, later in itertools.pairwise(slots[:6]):
        assert next_slot(spec, earlier) == later
        assert next_slot(spec, later - timedelta(microseconds=1)) == later


@settings(max_examples=200, deadline=None)
@given(
    seconds=st.floats(min_value=1, max_value=100_000).map(lambda value: round(value, 3)),
    anchor=st.none() | st.datetimes(timezones=st.just(UTC), min_value=datetime(1990, 1, 1)),
    start=STARTS,
    span=st.floats(min_value=-100, max_value=1_000_000),
)
def test_interval_expected_count_matches_the_slots(seconds, anchor, start, span):
    spec = every(seconds, anchor=anchor)
    end = start + timedelta(seconds=span)
    count = expected_count(spec, start, end)
    if span < 200 * seconds:
        assert count == len(list(slots_between(spec, start, end)))
    first, step = next_slot(spec, start), timedelta(seconds=seconds)
    if count == 0:
        assert first > end
    else:
        assert first + (count - 1) * step <= end < first + count * step


# spec dicts ---------------------------------------------------------------------------------


def test_spec_round_trip_and_hash():
    spec = cron(
        "35 * * * *", tz="Europe/Berlin", args={"b": [1, 2], "a": {"x": None}}, queue="billing",
        priority=5, overlap="buffer_one", catch_up="all", catch_up_limit=7, jitter=12.5,
        dst="skip", enabled=False, misfire_grace=timedelta(seconds=30),
    )  # fmt: skip
    data = spec.to_spec_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["overlap"] == "buffer_one"
    again = ScheduleSpec.from_spec_dict(json.loads(json.dumps(data)))
    assert again == spec
    assert hash(again) == hash(spec)
    assert again.overlap is Overlap.BUFFER_ONE
    assert again.spec_hash() == spec.spec_hash()


def test_interval_spec_round_trip_keeps_the_anchor():
    spec = every(
        timedelta(minutes=5), anchor=datetime(2026, 1, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo"))
    )
    again = ScheduleSpec.from_spec_dict(spec.to_spec_dict())
    assert again == spec
    assert again.anchor == datetime(2025, 12, 31, 16, tzinfo=UTC)


def test_spec_hash_is_stable():
    spec = every(60)
    assert spec.spec_hash() == every(60.0).spec_hash() == every(timedelta(minutes=1)).spec_hash()
    assert (
        every(60, args={"a": 1, "b": 2}).spec_hash() == every(60, args={"b": 2, "a": 1}).spec_hash()
    )
    assert spec.spec_hash() != every(61).spec_hash()
    assert spec.spec_hash() != every(60, enabled=False).spec_hash()
    assert len(spec.spec_hash()) == 64
    # The hash is stored with each schedule: changing it makes every deployment see an update.
    assert spec.spec_hash() == GOLDEN_HASH


GOLDEN_HASH = "c6271a4c40e33d18b5527b23ae525bb4be99bd5344f262ac5b1e00ae52253345"


def test_from_spec_dict_rejects_unknown_keys():
    data = every(60).to_spec_dict() | {"colour": "blue"}
    with pytest.raises(InvalidSchedule, match="schedule 'job': unknown spec keys: colour"):
        ScheduleSpec.from_spec_dict(data)
    with pytest.raises(InvalidSchedule, match="a spec needs both name and task"):
        ScheduleSpec.from_spec_dict({"name": "job", "every": 60})


STORABLE_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
                        max_size=5)  # no NUL, no lone surrogates


@settings(max_examples=50)
@given(
    name=st.from_regex(r"[A-Za-z0-9_.:\-]{1,20}", fullmatch=True),
    args=st.dictionaries(STORABLE_TEXT, st.integers() | STORABLE_TEXT | st.none()),
    seconds=st.integers(min_value=2, max_value=10**6),
    catch_up=st.sampled_from(["none", "latest", "all"]),
)
def test_any_spec_round_trips(name, args, seconds, catch_up):
    spec = ScheduleSpec.create(name, "task", every=seconds, args=args, catch_up=catch_up, jitter=1)
    again = ScheduleSpec.from_spec_dict(json.loads(json.dumps(spec.to_spec_dict())))
    assert again == spec
    assert again.spec_hash() == spec.spec_hash()
