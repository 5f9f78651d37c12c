"""Schedule policies applied again when a slot's job is claimed, not only when it was enqueued.

A slot job can wait long after the enqueuer recorded it on time: its queue was paused, or the
workers of its queue were down while other workers kept enqueuing. When such a backlog is finally
claimed, the schedule's policies still decide, from what the job row carries (``overlap``, and
``catch_up`` and ``misfire_grace`` written at enqueue):

=================  ==============================================================================
``latest``         only the newest waiting slot of the schedule runs; the older ones end
                   ``coalesced`` into it
``none``           a slot whose job waited past its misfire grace (``now - run_at > grace``) ends
                   ``missed``
``buffer_one``     of the waiting slots left, only the oldest one stays behind the run in progress
                   (two when none runs: one starts now, one is buffered); the newer ones end
                   ``skipped_overlap``
=================  ==============================================================================

Only first runs (``attempt = 0``) that are due and waiting are judged: a retry belongs to a slot
that already started. A backfilled slot (its ledger row's note ``backfill``) is never judged: an
operator asked for each slot of the range, so its jobs wait for the key one after another.
Each ended job is ``cancelled`` with the note as its error, and its ledger
row gets the outcome and the same note. The pass runs at the start of every claim that may start
a slot job (PostgreSQL's full claim — the one-statement claim's gate sends every due waiting slot
job there — and every SQLite claim), over the queues and tasks the claimer may take, inside the
claim's transaction; on PostgreSQL its rows are locked ``SKIP LOCKED``, so two claimers never
judge the same job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

from oncely.store.dialect import Dialect, Row
from oncely.store.ops.jobs import set_ledger_outcome
from oncely.store.params import ClaimResult, JobClaimParams
from oncely.store.rows import as_required_datetime
from oncely.types import ErrorKind, JobError, SlotOutcome


@dataclass(frozen=True)
class SlotVerdict:
    """A waiting slot job the claim ended, with its outcome and note."""

    job_id: int
    schedule: str
    slot: datetime
    outcome: SlotOutcome
    note: str


def judge(rows: Sequence[Row], now: datetime) -> list[tuple[Row, SlotOutcome, str]]:
    """The verdicts on due waiting first runs of slots (rows sorted by schedule, then slot)."""
    verdicts: list[tuple[Row, SlotOutcome, str]] = []
    for _, group in groupby(rows, key=lambda row: row["schedule"]):
        waiting = [row for row in group if not row["backfilled"]]
        if not waiting:
            continue
        newest = waiting[-1]
        kept = []
        for row in waiting:
            catch_up, slot = row["catch_up"], as_required_datetime(row["slot"])
            late = (now - as_required_datetime(row["run_at"])).total_seconds()
            grace = float(row["misfire_grace"] or 0.0)
            if catch_up == "latest" and row is not newest:
                into = as_required_datetime(newest["slot"]).isoformat()
                note = f"coalesced at claim into slot {into} (catch_up=latest)"
                verdicts.append((row, SlotOutcome.COALESCED, note))
            elif catch_up == "none" and late > grace:
                note = (f"missed at claim: slot {slot.isoformat()} waited {late:.0f} s, past "
                        f"its misfire grace of {grace:g} s (catch_up=none)")
                verdicts.append((row, SlotOutcome.MISSED, note))
            else:
                kept.append(row)
        buffered = [row for row in kept if row["overlap"] == "buffer_one"]
        # one may run now when its key is free, and one more waits behind it (the buffer)
        room = 1 if any(row["key_held"] for row in buffered) else 2
        for row in buffered[room:]:
            first = as_required_datetime(buffered[0]["slot"]).isoformat()
            note = f"skipped at claim: slot {first} is already buffered (overlap=buffer_one)"
            verdicts.append((row, SlotOutcome.SKIPPED_OVERLAP, note))
    return verdicts


def apply(d: Dialect, conn: Any, params: JobClaimParams) -> list[SlotVerdict]:
    """Judge the due waiting slot jobs this claimer may take and end the ones their policies
    drop; inside the claim's transaction."""
    values = {
        "now": d.instant(params.now),
        "queues": None if params.queues is None else d.array(list(params.queues)),
        "tasks": None if params.tasks is None else d.array(list(params.tasks)),
    }
    rows = d.fetch(conn, "job_list_waiting_slots", values)
    if not rows:
        return []
    ended = []
    for row, outcome, note in judge(rows, params.now):
        error = JobError(attempt=0, at=params.now, kind=ErrorKind.CANCELLED, message=note)
        job_id = int(row["id"])
        end = {"id": job_id, "now": values["now"], "error": d.error_param(error)}
        if d.fetch_one(conn, "job_end_by_policy", end) is None:
            continue
        set_ledger_outcome(d, conn, (row["schedule"], row["slot"]), job_id, outcome, note,
                           values["now"])
        ended.append(SlotVerdict(job_id, row["schedule"], as_required_datetime(row["slot"]),
                                 outcome, note))
    return ended




def claim_after_policies(
    d: Dialect, conn: Any, params: JobClaimParams, claim: Callable[[Any], ClaimResult]
) -> ClaimResult:
    """Run the policy pass, then ``claim`` on the same connection and transaction; the result
    lists the jobs the pass ended."""
    ended = apply(d, conn, params)
    result = claim(conn)
    return dataclasses.replace(result, policy_ended=ended) if ended else result
