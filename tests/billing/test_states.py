"""The threshold state machine, table-driven (free plan: 50k/100k/200k emails, block at 250k)."""

from __future__ import annotations

import pytest

from oncely_billing.settings import PlanLimits
from oncely_billing.states import Decision, Observation, ThresholdState, decide, highest_crossed

FREE = PlanLimits()
W, B = ThresholdState.WARNING, ThresholdState.BLOCKED
CYCLE, PREVIOUS_CYCLE = 20_500, 20_470

# (previous usage, previous state, same cycle?, paid, enforce, current usage)
#   → (new state, email threshold, written?)
CASES = [
    # below every threshold
    ((0, None, True, False, True, 49_999), (None, None, True)),
    ((10, None, True, False, True, 10), (None, None, False)),
    # landing exactly on a threshold fires
    ((49_999, None, True, False, True, 50_000), (W, 50_000, True)),
    ((40_000, None, True, False, True, 60_000), (W, 50_000, True)),
    # already past it: no second email
    ((50_000, W, True, False, True, 60_000), (W, None, True)),
    ((60_000, W, True, False, True, 60_000), (W, None, False)),
    # several crossed in one run: one email, the highest
    ((0, None, True, False, True, 210_000), (W, 200_000, True)),
    ((99_999, W, True, False, True, 100_000), (W, 100_000, True)),
    ((100_000, W, True, False, True, 199_999), (W, None, True)),
    ((150_000, W, True, False, True, 200_000), (W, 200_000, True)),
    # block
    ((200_000, W, True, False, True, 250_000), (B, 250_000, True)),
    ((0, None, True, False, True, 300_000), (B, 250_000, True)),
    ((260_000, B, True, False, True, 270_000), (B, None, True)),
    # usage falls (a project was deleted): state follows, nothing is sent
    ((260_000, B, True, False, True, 240_000), (W, None, True)),
    ((60_000, W, True, False, True, 40_000), (None, None, True)),
    # a new cycle resets usage and state; crossings count from zero
    ((260_000, B, False, False, True, 1_000), (None, None, True)),
    ((60_000, W, False, False, True, 60_000), (W, 50_000, True)),
    ((0, None, False, False, True, 0), (None, None, False)),
    # paid first: state cleared (unblocked), usage untouched, nothing sent
    ((260_000, B, True, True, True, None), (None, None, True)),
    ((60_000, W, True, True, False, None), (None, None, True)),
    ((60_000, None, True, True, True, None), (None, None, False)),
    # shadow mode: usage tracked, no state, no email; a state left from enforcing is cleared
    ((0, None, True, False, False, 300_000), (None, None, True)),
    ((260_000, B, True, False, False, 270_000), (None, None, True)),
    ((300_000, None, True, False, False, 300_000), (None, None, False)),
    # enforcement switched on mid-cycle: entering a state sends its email (outbox dedups)
    ((300_000, None, True, False, True, 300_000), (B, 250_000, True)),
    ((120_000, None, True, False, True, 120_000), (W, 100_000, True)),
    ((60_000, W, True, False, True, 260_000), (B, 250_000, True)),
]


@pytest.mark.parametrize(("given", "expected"), CASES)
def test_transition(given: tuple, expected: tuple) -> None:
    previous_usage, previous_state, same_cycle, paid, enforce, usage = given
    state, email, written = expected
    observation = Observation(
        org_id=7, paid=paid,
        previous_cycle_day=CYCLE if same_cycle else PREVIOUS_CYCLE,
        previous_usage=previous_usage, previous_state=previous_state,
        cycle_day=CYCLE, usage=usage,
    )
    decision = decide(observation, FREE, enforce)
    assert (decision is not None) == written
    if decision is None:
        return
    assert isinstance(decision, Decision)
    assert (decision.state, decision.notify) == (state, email)
    if paid:
        assert decision.usage == previous_usage  # paid organizations' usage is not recounted
    else:
        assert decision.usage == usage and decision.cycle_day == CYCLE
    assert decision.blocked_changed == (decision.state_changed and B in (state, previous_state))


@pytest.mark.parametrize(("previous", "current", "expected"), [
    (0, 49_999, None), (0, 50_000, 50_000), (50_000, 50_000, None), (50_000, 50_001, None),
    (1, 100_000, 100_000), (200_000, 250_000, 250_000), (249_999, 10**9, 250_000),
    (300_000, 10, None),
])
def test_crossing_rule(previous: int, current: int, expected: int | None) -> None:
    assert highest_crossed(previous, current, FREE) == expected


def test_limits_are_configurable_per_plan() -> None:
    team_trial = PlanLimits(included=10, notify_at=(10, 20), block_at=30)
    assert team_trial.thresholds == (10, 20, 30) and team_trial.warn_at == 10
    observation = Observation(1, False, CYCLE, 0, None, CYCLE, 25)
    decision = decide(observation, team_trial, enforce=True)
    assert decision is not None and (decision.state, decision.notify) == (W, 20)
