import random
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oncely import ConfigError, Retry, RetryPolicy


def test_fixed_linear_exponential_delays():
    fixed = RetryPolicy(5, backoff="fixed", base_delay=3)
    linear = RetryPolicy(5, backoff="linear", base_delay=3)
    assert [fixed.delay_after(n) for n in (1, 2, 3)] == [3, 3, 3]
    assert [linear.delay_after(n) for n in (1, 2, 3)] == [3, 6, 9]
    expo = RetryPolicy(5, backoff="exponential", base_delay=5)
    assert [expo.delay_after(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]


def test_max_delay_caps_every_backoff():
    policy = RetryPolicy(50, backoff="exponential", base_delay=1, max_delay=60)
    assert policy.delay_after(40) == 60
    assert policy.delay_after(10_000) == 60  # no overflow for absurd attempt numbers


@given(attempt=st.integers(1, 200), base=st.floats(0, 1000), cap=st.floats(0, 10_000))
def test_full_jitter_stays_within_zero_and_the_capped_delay(attempt, base, cap):
    policy = RetryPolicy(10, backoff="exponential", base_delay=base, max_delay=cap, jitter=True)
    plain = RetryPolicy(10, backoff="exponential", base_delay=base, max_delay=cap)
    delay = policy.delay_after(attempt, random.Random(attempt))
    assert 0 <= delay <= plain.delay_after(attempt)


def test_jitter_spreads_retries():
    policy = RetryPolicy(5, base_delay=10, jitter=True)
    rng = random.Random(7)
    delays = {round(policy.delay_after(3, rng), 3) for _ in range(50)}
    assert len(delays) > 40


def test_next_retry_at_adds_the_policys_delay():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    policy = RetryPolicy(3, backoff="fixed", base_delay=42)
    assert policy.next_retry_at(1, now) == now + timedelta(seconds=42)


def test_retry_is_the_request_a_handler_raises():
    request = Retry(delay=42)
    assert isinstance(request, Exception) and request.delay == 42
    assert Retry().delay is None


def test_retry_with_policy_arguments_is_a_deprecated_alias_of_retry_policy():
    with pytest.warns(DeprecationWarning, match="RetryPolicy"):
        policy = Retry(attempts=5, backoff="fixed", base_delay=3)
    assert policy == RetryPolicy(5, backoff="fixed", base_delay=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Retry(delay=1)  # the request itself warns about nothing


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"attempts": 0}, "attempts must be an integer >= 1"),
        ({"backoff": "quadratic"}, "use one of fixed, linear, exponential"),
        ({"base_delay": -1}, "base_delay must be a finite number of seconds >= 0"),
        ({"max_delay": float("inf")}, "max_delay must be a finite number of seconds >= 0"),
    ],
)
def test_invalid_policies_say_what_to_fix(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("delay", [-5, float("nan"), float("inf")])
def test_an_invalid_requested_delay_says_what_to_fix(delay):
    with pytest.raises(ConfigError, match="delay must be a finite number of seconds >= 0"):
        Retry(delay=delay)


def test_max_attempts_defaults_to_one():
    assert RetryPolicy().max_attempts == 1
    assert RetryPolicy(attempts=5).max_attempts == 5
