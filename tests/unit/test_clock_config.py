import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from tests.conftest import ROOT

from oncely import App, ConfigError, FrozenClock, Keep, Settings, WarpClock
from oncely.clock import clock_from_spec
from oncely.config import DURATIONS


def test_frozen_clock_moves_only_when_told():
    clock = FrozenClock("2026-03-01T00:00:00+00:00")
    start, mono = clock.now(), clock.monotonic()
    assert clock.now() == start
    clock.advance(90)
    assert clock.now() - start == timedelta(seconds=90)
    assert clock.monotonic() - mono == 90
    clock.sleep(10)  # sleeping a frozen clock advances it instead of waiting
    assert clock.now() - start == timedelta(seconds=100)
    with pytest.raises(ValueError):
        clock.advance(-1)
    clock.set("2026-03-02T00:00:00+00:00")
    assert clock.now() == datetime(2026, 3, 2, tzinfo=UTC)


def test_warp_clock_spec_round_trip_agrees_across_instances():
    origin = datetime(2026, 1, 1, tzinfo=UTC)
    real_origin = time.time()
    warp = WarpClock(origin, speed=3600.0, real_origin=real_origin)
    twin = clock_from_spec(warp.to_spec())
    assert isinstance(twin, WarpClock)
    assert (twin.sim_origin, twin.speed, twin.real_origin) == (origin, 3600.0, real_origin)
    # Both map the same real instant to the same simulated one (read 1 ms apart: < 4 s sim).
    assert abs((twin.now() - warp.now()).total_seconds()) < 4
    assert twin.now() >= origin


def test_settings_read_env_and_validate():
    env = {"ONCELY_LEASE_TTL": "12", "ONCELY_CONCURRENCY": "8"}
    settings = Settings.from_env(env, poll_interval=0.2)
    assert (settings.lease_ttl, settings.concurrency, settings.poll_interval) == (12.0, 8, 0.2)
    with pytest.raises(ConfigError, match="ONCELY_LEASE_TTL"):
        Settings.from_env({"ONCELY_LEASE_TTL": "soon"})
    with pytest.raises(ConfigError, match="concurrency"):
        Settings(concurrency=0)


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_database_url_in_the_environment_is_refused_not_defaulted(
    blank: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="ONCELY_DATABASE_URL is empty"):
        Settings.from_env({"ONCELY_DATABASE_URL": blank})
    assert Settings.from_env({"ONCELY_DATABASE_URL": blank},
                             database_url="sqlite:///x.db").database_url == "sqlite:///x.db"
    assert Settings.from_env({"ONCELY_LEASE_TTL": ""}).lease_ttl == 30.0  # others: unset
    monkeypatch.setenv("ONCELY_DATABASE_URL", blank)
    with pytest.raises(ConfigError, match="ONCELY_DATABASE_URL is empty"):
        App()
    assert App("sqlite:///x.db").url == "sqlite:///x.db"  # an explicit URL comes first


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "0", "-1"])
@pytest.mark.parametrize("name", DURATIONS)
def test_every_duration_refuses_nan_infinity_zero_and_negatives(name, raw):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({f"ONCELY_{name.upper()}": raw})
    assert str(refused.value) == (f"setting {name} (ONCELY_{name.upper()}) must be a positive, "
                                  f"finite number of seconds, got {float(raw)!r}")


def test_a_bad_duration_stops_the_worker_with_one_line_and_exit_code_2():
    env = {**os.environ, "ONCELY_LEASE_TTL": "nan", "ONCELY_DATABASE_URL": "sqlite:///:memory:"}
    done = subprocess.run([sys.executable, "-m", "oncely", "--app", "tests.apps.basic:app",
                           "worker"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "oncely: error: setting lease_ttl (ONCELY_LEASE_TTL) must be a positive, finite number "
        "of seconds, got nan"]


def test_queue_retention_ages_must_be_positive_and_finite():
    for bad in (float("nan"), float("inf"), 0, -5):
        with pytest.raises(ConfigError, match="Keep\\(age=…\\) must be a positive, finite"):
            Keep(age=bad)
