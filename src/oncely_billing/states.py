"""The free-tier threshold state machine (pure; the job applies it to the rows SQL selected).

States of an organization within its cycle::

    none ──usage ≥ warn_at──► WARNING ──usage ≥ block_at──► BLOCKED
      ▲                          │                             │
      └── new cycle, paid, shadow mode, usage falls back ──────┘

Rules, in order:

1. **Paid first**: an active subscription, a manual plan override or another provider's bundle
   clears the state (a blocked organization is unblocked); nothing is sent.
2. **New cycle**: usage and state start again from zero; the previous usage is 0 for rule 4.
3. **Shadow mode** (enforcement off): usage is recorded, the state is cleared, nothing is sent.
4. **Crossing**: threshold ``t`` is crossed when ``previous < t <= current``; landing exactly on
   ``t`` fires. When several are crossed in one run, one email goes out, for the highest.
   An organization that enters a higher state without crossing anything in this run (shadow
   mode was just switched off) gets the email of the highest threshold it has reached, so
   nobody is blocked silently. The outbox's unique key (org, cycle start, threshold) makes each
   email exactly-once, whichever rule asks for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from oncely_billing.settings import PlanLimits


class ThresholdState(enum.StrEnum):
    WARNING = "WARNING"
    BLOCKED = "BLOCKED"


@dataclass(frozen=True)
class Observation:
    """What the job knows of one organization in one run."""

    org_id: int
    paid: bool
    previous_cycle_day: int | None  # epoch day of the cycle the recorded usage belongs to
    previous_usage: int
    previous_state: ThresholdState | None
    cycle_day: int  # epoch day of the current cycle's start
    usage: int | None  # current-cycle usage (None for paid organizations: not counted)


@dataclass(frozen=True)
class Decision:
    org_id: int
    cycle_day: int | None
    usage: int
    state: ThresholdState | None
    notify: int | None  # the threshold to email about, if any
    state_changed: bool
    usage_changed: bool
    previous_state: ThresholdState | None = None

    @property
    def blocked_changed(self) -> bool:
        """True when the organization moved into or out of BLOCKED (the gate must forget it)."""
        return self.state_changed and ThresholdState.BLOCKED in (self.state, self.previous_state)


def level(usage: int, limits: PlanLimits) -> ThresholdState | None:
    if usage >= limits.block_at:
        return ThresholdState.BLOCKED
    if usage >= limits.warn_at:
        return ThresholdState.WARNING
    return None


def highest_crossed(previous: int, current: int, limits: PlanLimits) -> int | None:
    crossed = [t for t in limits.thresholds if previous < t <= current]
    return max(crossed) if crossed else None


_RANK = {None: 0, ThresholdState.WARNING: 1, ThresholdState.BLOCKED: 2}


def highest_reached(usage: int, limits: PlanLimits) -> int | None:
    reached = [t for t in limits.thresholds if t <= usage]
    return max(reached) if reached else None


def decide(obs: Observation, limits: PlanLimits, enforce: bool) -> Decision | None:
    """What to write for one organization, or None when nothing changes."""
    if obs.paid:
        if obs.previous_state is None:
            return None
        return Decision(
            obs.org_id, obs.previous_cycle_day, obs.previous_usage, None, None,
            state_changed=True, usage_changed=False, previous_state=obs.previous_state,
        )
    usage = obs.usage or 0
    same_cycle = obs.previous_cycle_day == obs.cycle_day
    baseline = obs.previous_usage if same_cycle else 0
    state = level(usage, limits) if enforce else None
    notify = highest_crossed(baseline, usage, limits) if enforce else None
    previous_level = obs.previous_state if same_cycle else None
    if enforce and notify is None and _RANK[state] > _RANK[previous_level]:
        notify = highest_reached(usage, limits)
    usage_changed = usage != obs.previous_usage
    cycle_changed = not same_cycle and (usage != 0 or obs.previous_usage != 0)
    state_changed = state != obs.previous_state
    if not (usage_changed or cycle_changed or state_changed or notify is not None):
        return None
    return Decision(
        obs.org_id, obs.cycle_day, usage, state, notify,
        state_changed=state_changed, usage_changed=usage_changed or cycle_changed,
        previous_state=obs.previous_state,
    )
