import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oncely import ConfigError, Retry


def test_fixed_linear_exponential_delays():
    assert [Retry(5, backoff="fixed", base_delay=3).delay_after(n) for n in (1, 2, 3)] == [3, 3, 3]
    assert [Retry(5, backoff="linear", base_delay=3).delay_after(n) for n in (1, 2, 3)] == [3, 6, 9]
    expo = Retry(5, backoff="exponential", base_delay=5)
    assert [expo.delay_after(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]


def test_max_delay_caps_every_backoff():
    policy = Retry(50, backoff="exponential", base_delay=1, max_delay=60)
    assert policy.delay_after(40) == 60
    assert policy.delay_after(10_000) == 60  # no overflow for absurd attempt numbers


@given(attempt=st.integers(1, 200), base=st.floats(0, 1000), cap=st.floats(0, 10_000))
def test_full_jitter_stays_within_zero_and_the_capped_delay(attempt, base, cap):
    policy = Retry(10, backoff="exponential", base_delay=base, max_delay=cap, jitter=True)
    plain = Retry(10, backoff="exponential", base_delay=base, max_delay=cap)
    delay = policy.delay_after(attempt, random.Random(attempt))
    assert 0 <= delay <= plain.delay_after(attempt)


def test_jitter_spreads_retries():
    policy = Retry(5, base_delay=10, jitter=True)
    rng = random.Random(7)
    delays = {round(policy.delay_after(3, rng), 3) for _ in range(50)}
    assert len(delays) > 40


def test_explicit_delay_wins_and_next_retry_at_adds_it():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    request = Retry(delay=42)
    assert request.delay_after(7) == 42
    assert request.next_retry_at(1, now) == now + timedelta(seconds=42)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"attempts": 0}, "attempts must be an integer >= 1"),
        ({"backoff": "quadratic"}, "use one of fixed, linear, exponential"),
        ({"base_delay": -1}, "base_delay must be a finite number of seconds >= 0"),
        ({"delay": -5}, "delay must be a finite number of seconds >= 0"),
        ({"delay": float("nan")}, "delay must be a finite number of seconds >= 0"),
        ({"max_delay": float("inf")}, "max_delay must be a finite number of seconds >= 0"),
    ],
)
def test_invalid_policies_say_what_to_fix(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Retry(**kwargs)


def test_max_attempts_defaults_to_one():
    assert Retry().max_attempts == 1
    assert Retry(attempts=5).max_attempts == 5
