"""The job and slot state machine as data: which event moves a job from which state to which,
what each end state records in the slot ledger, the notes it writes there, which events give
the attempt back, when a failed attempt is retried and a rescue fails the job, and which human
actions a job is eligible for.

Pure: no I/O, no clock. Both store dialects apply these rules inside their transactions (the
SQL checks the same states in its ``WHERE`` clauses, so a row that moved meanwhile is left
alone); the worker and the rescuer ask it which event a handler's end or a rescue is
(:func:`attempt_failed`, :func:`rescue_state`) and what that event records
(:data:`FINISH_STATE`, :data:`REFUNDS_ATTEMPT`); a conformance test walks :data:`TRANSITIONS`
against every store.

::

    insert ──► scheduled (run_at > now) ─┐
           └─► available ────────────────┤  CLAIM (run_at <= now, lease granted)
               retryable (run_at) ───────┤
                                          ▼
                                       running ──SUCCEED──► succeeded        slot: ran
                                          │    ──FAIL─────► failed           slot: failed
                                          │    ──CANCEL───► cancelled        slot: failed
                                          │    ──RETRY────► retryable
                                          ├──RELEASE (graceful shutdown)──► retryable, refunded
                                          └──RESCUE (lease expired, or owner
                                             proven gone)──► retryable, attempt given back
                                                           | failed (past max_rescues)

    scheduled | available ──SKIP_OVERLAP (first run of a slot, key held)──► cancelled
                                                                   slot: skipped_overlap
    scheduled | available | retryable ──CANCEL_WAITING (a human)──► cancelled   slot: failed
    running ──REQUEST_CANCEL (a human)──► running, cancel_requested (the worker stops it)
    failed | cancelled | retryable | scheduled ──RETRY_BY_HAND──► available
                                                  slot (of a finished job): enqueued again
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from oncely.types import JobError, JobState, SlotOutcome

__all__ = [
    "FINISH_STATE",
    "FINISH_TARGETS",
    "REFUNDS_ATTEMPT",
    "RETRIED_BY_HAND",
    "SLOT_OUTCOME",
    "TRANSITIONS",
    "CancelAction",
    "JobEvent",
    "RetryAction",
    "attempt_failed",
    "cancel_action",
    "cancelled_note",
    "check_finish_target",
    "coalesced_note",
    "finish_note",
    "rescue_message",
    "rescue_note",
    "rescue_state",
    "retry_action",
    "retry_refusal",
    "skipped_note",
    "slot_outcome",
]

S = JobState


class JobEvent(enum.StrEnum):
    CLAIM = "claim"  # a worker starts the job under a new lease and fence
    SKIP_OVERLAP = "skip_overlap"  # the claim found the slot's singleton key held (overlap=skip)
    SUCCEED = "succeed"
    FAIL = "fail"  # failed for good (no attempts left, or not retryable)
    CANCEL = "cancel"  # the handler, or a requested cancellation, stopped it
    RETRY = "retry"  # failed with attempts left
    RELEASE = "release"  # a graceful shutdown handed it back; the attempt is refunded
    RESCUE = "rescue"  # its lease expired or its worker is gone: retried (refunded) or failed
    CANCEL_WAITING = "cancel_waiting"  # a human cancelled it before it ran
    REQUEST_CANCEL = "request_cancel"  # a human asked its worker to stop it
    RETRY_BY_HAND = "retry_by_hand"  # a human gave it one more attempt, now


_WAITING = frozenset({S.SCHEDULED, S.AVAILABLE, S.RETRYABLE})

#: (state, event) -> the states the event may leave the job in. A pair that is not here is
#: refused (the store leaves the row alone).
TRANSITIONS: Mapping[tuple[JobState, JobEvent], frozenset[JobState]] = {
    **{(state, JobEvent.CLAIM): frozenset({S.RUNNING}) for state in _WAITING},
    (S.SCHEDULED, JobEvent.SKIP_OVERLAP): frozenset({S.CANCELLED}),
    (S.AVAILABLE, JobEvent.SKIP_OVERLAP): frozenset({S.CANCELLED}),
    (S.RUNNING, JobEvent.SUCCEED): frozenset({S.SUCCEEDED}),
    (S.RUNNING, JobEvent.FAIL): frozenset({S.FAILED}),
    (S.RUNNING, JobEvent.CANCEL): frozenset({S.CANCELLED}),
    (S.RUNNING, JobEvent.RETRY): frozenset({S.RETRYABLE}),
    (S.RUNNING, JobEvent.RELEASE): frozenset({S.RETRYABLE}),
    (S.RUNNING, JobEvent.RESCUE): frozenset({S.RETRYABLE, S.FAILED}),
    **{(state, JobEvent.CANCEL_WAITING): frozenset({S.CANCELLED}) for state in _WAITING},
    (S.RUNNING, JobEvent.REQUEST_CANCEL): frozenset({S.RUNNING}),
    **{
        (state, JobEvent.RETRY_BY_HAND): frozenset({S.AVAILABLE})
        for state in (S.FAILED, S.CANCELLED, S.RETRYABLE, S.SCHEDULED)
    },
}

#: The states a fenced finish (``Store.job_finish``) may move a running job to.
FINISH_TARGETS = frozenset({S.SUCCEEDED, S.RETRYABLE, S.FAILED, S.CANCELLED})

#: The one state each event a worker records moves a running job to (its fenced finish):
#: succeed, fail, cancel, retry and release. A rescue has two (see :func:`rescue_state`).
FINISH_STATE: Mapping[JobEvent, JobState] = {
    event: next(iter(targets))
    for (state, event), targets in TRANSITIONS.items()
    if state == S.RUNNING and len(targets) == 1 and targets <= FINISH_TARGETS
}

#: The events that give the attempt back: the attempt was lost to the worker (its shutdown, its
#: death or silence), not spent by the handler.
REFUNDS_ATTEMPT = frozenset({JobEvent.RELEASE, JobEvent.RESCUE})

#: The ledger outcome a slot's job records when it ends in that state (retryable: not yet).
SLOT_OUTCOME: Mapping[JobState, SlotOutcome] = {
    S.SUCCEEDED: SlotOutcome.RAN,
    S.FAILED: SlotOutcome.FAILED,
    S.CANCELLED: SlotOutcome.FAILED,
}

RETRIED_BY_HAND = "retried by hand"


def attempt_failed(attempt: int, max_attempts: int) -> JobEvent:
    """What a failed ``attempt`` of ``max_attempts`` is (an error, a timeout, a handler's request
    to retry): RETRY while attempts remain, else FAIL."""
    return JobEvent.RETRY if attempt < max_attempts else JobEvent.FAIL


def rescue_state(rescues: int, max_rescues: int) -> JobState:
    """Where the ``rescues``-th rescue of a job (this one counted) leaves it: back to work while
    within ``max_rescues``, else failed (a job that kills its worker every time ends)."""
    return S.RETRYABLE if rescues <= max_rescues else S.FAILED


def check_finish_target(state: JobState) -> None:
    """Refuse (ValueError: a programming error) a fenced finish to a state not in the table."""
    if state not in FINISH_TARGETS:
        raise ValueError(f"a running job cannot finish as {state!r}")


def slot_outcome(state: JobState) -> SlotOutcome | None:
    """The ledger outcome of a slot whose job ended in ``state`` (None: the slot stays open)."""
    return SLOT_OUTCOME.get(state)


def finish_note(state: JobState, error: JobError | None) -> str | None:
    """The ledger note of a fenced finish to ``state`` with ``error``, if any."""
    message = None if error is None else error.message
    if state == S.CANCELLED:
        return f"cancelled: {message}" if message else "cancelled"
    if state == S.FAILED:
        return message
    return None


def cancelled_note(reason: str) -> str:
    """The ledger note of a slot whose waiting job a human cancelled."""
    return f"cancelled: {reason}"


def skipped_note(key: str, holder: int | None) -> str:
    """The note (ledger and job error) of a first run skipped because ``key`` was held."""
    by = f"job {holder}" if holder is not None else "another job"
    return f"skipped: {by} still holds singleton key {key!r} (overlap=skip)"


def coalesced_note(job_id: int, unique_key: str | None) -> str:
    """The ledger note of a slot merged into the unfinished job holding its unique key."""
    return f"coalesced into job {job_id} (unique key {unique_key!r})"


def rescue_message(rescues: int, max_rescues: int, reason: str) -> str:
    """The error message of the ``rescues``-th rescue, ``reason`` saying why it was due."""
    if rescue_state(rescues, max_rescues) == S.FAILED:
        return f"rescued {rescues - 1} times already, the limit is {max_rescues}; failed: {reason}"
    return f"rescued ({rescues} of {max_rescues}), attempt given back: {reason}"


def rescue_note(rescues: int, max_rescues: int, reason: str) -> str:
    """The slot ledger's note for the same rescue."""
    if rescue_state(rescues, max_rescues) == S.FAILED:
        return rescue_message(rescues, max_rescues, reason)
    return f"rescued ({rescues} of {max_rescues}) and re-queued: {reason}"


class CancelAction(enum.StrEnum):
    CANCEL = "cancel"  # end the waiting job now
    REQUEST = "request"  # flag the running job; its worker stops it
    NOTHING = "nothing"  # it has finished already


def cancel_action(state: JobState) -> CancelAction:
    if state == S.RUNNING:
        return CancelAction.REQUEST
    if state.finished:
        return CancelAction.NOTHING
    return CancelAction.CANCEL


class RetryAction(enum.StrEnum):
    RETRY = "retry"
    NOTHING = "nothing"  # available already
    REFUSE = "refuse"  # running or succeeded: nothing to retry


def retry_action(state: JobState) -> RetryAction:
    if state == S.AVAILABLE:
        return RetryAction.NOTHING
    if (state, JobEvent.RETRY_BY_HAND) in TRANSITIONS:
        return RetryAction.RETRY
    return RetryAction.REFUSE


def retry_refusal(job_id: int, state: JobState) -> str:
    """The one line a refused retry says."""
    return (
        f"job {job_id} is {state}; only failed, cancelled, retryable or scheduled jobs "
        "can be retried"
    )
