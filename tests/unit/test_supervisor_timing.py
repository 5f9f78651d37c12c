"""When the maintenance loop wakes up: at its interval, or as the next slot falls due."""

from __future__ import annotations

import pytest

import oncely
from oncely.maintenance.supervisor import SLOT_WAKE_LAG, Supervisor


def supervisor(clock: oncely.FrozenClock, **schedules: dict) -> Supervisor:
    app = oncely.App("sqlite:///unused.db", clock=clock)  # the pause never opens the store

    @app.task(name="tick")
    def tick(ctx: oncely.JobContext) -> None:
        return None

    for name, options in schedules.items():
        app.schedule(name, tick, **options)
    return Supervisor(app.runtime, "w1")


def test_the_loop_wakes_when_a_slot_falls_due_not_up_to_an_interval_later():
    clock = oncely.FrozenClock("2026-11-30T12:00:03+00:00")
    sup = supervisor(clock, tens={"every": 10}, fives={"cron": "*/5 * * * * *"})
    assert sup._pause(0.5) == 0.5  # the next slot (12:00:05) is 2 s away
    clock.set("2026-11-30T12:00:04.900+00:00")
    assert sup._pause(0.5) == pytest.approx(0.1 + SLOT_WAKE_LAG)
    clock.set("2026-11-30T12:00:09.950+00:00")
    assert sup._pause(0.5) == pytest.approx(0.05 + SLOT_WAKE_LAG)


def test_a_clock_that_stands_still_does_not_make_the_loop_spin():
    clock = oncely.FrozenClock("2026-11-30T12:00:09.999+00:00")
    sup = supervisor(clock, tens={"every": 10})
    assert sup._pause(0.5) == pytest.approx(0.001 + SLOT_WAKE_LAG)
    assert sup._pause(0.5) == 0.5  # woken, but the frozen clock has not moved: plain interval


def test_disabled_schedules_and_apps_without_schedules_keep_the_interval():
    clock = oncely.FrozenClock("2026-11-30T12:00:09.900+00:00")
    assert supervisor(clock)._pause(0.5) == 0.5
    assert supervisor(clock, off={"every": 10, "enabled": False})._pause(0.5) == 0.5
