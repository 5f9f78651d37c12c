import time
from datetime import UTC, datetime, timedelta

import pytest

from oncely import ConfigError, FrozenClock, Settings, WarpClock
from oncely.clock import clock_from_spec


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
