"""Small pure pieces of observability: redaction, durations, config validation, the guard."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from oncely import readmodel
from oncely.errors import ConfigError
from oncely.observe.diagnose import Rate, WatchdogConfig, windows_for
from oncely.observe.fmt import ratio, span, window_phrase
from oncely.observe.notify import WebhookNotifier
from oncely.schedules import ScheduleSpec


def test_secret_looking_values_are_redacted_at_any_depth() -> None:
    value = {"org_id": 7, "api_key": "sk_live", "nested": [{"Password": "x", "to": "a@b"}],
             "auth": {"token": "t"}, "unique_key": "kept"}
    assert readmodel.redact(value) == {
        "org_id": 7, "api_key": "***", "nested": [{"Password": "***", "to": "a@b"}],
        "auth": {"token": "***"}, "unique_key": "kept"}


def test_store_urls_never_show_a_password() -> None:
    assert readmodel.mask_url("postgresql://app:hunter2@db:5432/x?schema=s") == (
        "postgresql://app:***@db:5432/x?schema=s")
    assert readmodel.mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_durations_and_ratios_read_well() -> None:
    assert [span(s) for s in (0, 0.25, 45, 300, 330, 3600, 3900, 36000, 3 * 86400)] == [
        "0s", "0.25s", "45s", "5m", "5m30s", "1h", "1h05m", "10h", "3d"]
    assert window_phrase(3600) == "the last hour" and window_phrase(36000) == "the last 10h"
    assert ratio(31) == "31.0x" and ratio(None) == "-"


def test_windows_follow_the_period() -> None:
    hourly = ScheduleSpec.create("h", "t", cron="35 * * * *")
    assert windows_for(hourly, WatchdogConfig()) == [3600, 36000]
    assert windows_for(ScheduleSpec.create("s", "t", every=1), WatchdogConfig()) == [3600]
    daily = ScheduleSpec.create("d", "t", cron="0 3 * * *")
    assert windows_for(daily, WatchdogConfig()) == [86400, 7 * 86400]
    assert windows_for(hourly, WatchdogConfig(windows=(600, 60))) == [60, 600]


def test_invalid_watchdog_settings_are_refused() -> None:
    for bad in ({"too_many_ratio": 1.0}, {"min_excess": 0}, {"windows": (0,)},
                {"too_many_ratio": float("nan")}, {"windows": (float("inf"),)},
                {"settle_seconds": float("nan")}, {"stuck_min_seconds": -1.0}):
        with pytest.raises(ValueError):
            WatchdogConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="http"):
        WebhookNotifier("ftp://example.com/hook")


def test_an_attempt_lost_with_its_worker_and_its_rerun_count_as_one_run() -> None:
    """Two slots ran; one of them twice because its first worker died (rescued, run again)."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rate = Rate("s", "t", 3600.0, now, now, expected=2, slot_runs=3, retries=0, non_slot=0,
                non_slot_workers=0, overlaps=0, lost=1)
    assert rate.observed == 2 and rate.ratio == 1.0
    assert rate.to_dict()["lost"] == 1
