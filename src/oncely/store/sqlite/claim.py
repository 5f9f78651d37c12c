"""The run cycle of the SQLite store: claim (lease grant, fence, overlap policy), fenced finish,
lease renewal and leader election. The state machine is in :mod:`oncely.store.base`.

Every function runs inside one ``BEGIN IMMEDIATE`` transaction opened by the caller, which holds
SQLite's single write lock: the reads and writes of one claim cannot interleave with another
process's claim. That is also what makes queue controls atomic: a claim counts running jobs and
logged starts, admits candidates through its gate (``controls.py``) and logs its starts
before any other claim can look.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from oncely import lifecycle
from oncely.errors import StoreError
from oncely.store.base import (
    LEADER_LEASE_KEY,
    ClaimResult,
    JobClaimParams,
    JobFinish,
    LeaderState,
    LeaseRenewal,
    RenewResult,
)
from oncely.store.controls import ClaimRoom
from oncely.store.ops.jobs import (
    finish_target_values,
    is_plain_success,
    set_ledger_outcome,
    set_slot_outcome,
)
from oncely.store.rescue import holder_overdue
from oncely.store.rows import (
    as_datetime,
    as_required_datetime,
    dump_error,
    dump_json,
    started_jobs,
    to_epoch,
)
from oncely.store.sqlite import controls
from oncely.store.sqlite.dialect import QUERIES, SQLiteDialect, fetch, fetch_one, to_job
from oncely.types import ErrorKind, Job, JobError, JobState, Overlap, SlotOutcome


@dataclass
class _Claim:
    d: SQLiteDialect
    params: JobClaimParams
    now: float
    lease_expires_at: float
    claimed: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    # singleton keys this claim found held, with the job holding them when known
    held: dict[str, int | None] = field(default_factory=dict)
    # held keys whose holder missed a renewal: their candidates wait instead of being skipped
    overdue: set[str] = field(default_factory=set)


def claim_jobs(d: SQLiteDialect, conn: sqlite3.Connection, params: JobClaimParams) -> ClaimResult:
    if params.limit <= 0:
        return ClaimResult(jobs=[])
    now = to_epoch(params.now)
    claim = _Claim(d, params, now, now + params.lease_ttl)
    gate = controls.open_gate(conn, params)
    plain: list[sqlite3.Row] = []  # jobs without a singleton key: started together
    tasks = None if params.tasks is None else frozenset(params.tasks)
    for candidate in _candidates(conn, params, now, gate):
        if len(claim.claimed) + len(plain) >= params.limit:
            break
        if tasks is not None and candidate["task"] not in tasks:
            continue  # a task this worker does not have: it waits for one that does
        job = (candidate["queue"], candidate["task"], candidate["concurrency_key"])
        if gate is not None and not gate.admits(*job):
            continue  # it waits, in its place, for the control to have room
        if candidate["singleton_key"] is None:
            plain.append(candidate)
        elif not _consider(conn, claim, candidate):
            continue
        if gate is not None:
            gate.take(*job)
    if plain:
        claim.claimed.extend(_start_plain(conn, claim, plain))
        claim.claimed.sort(key=lambda job: (-job.priority, job.run_at, job.id))
    if gate is None:
        return ClaimResult(jobs=claim.claimed, skipped_overlap=claim.skipped)
    controls.log_starts(conn, gate, claim.claimed)
    return ClaimResult(claim.claimed, claim.skipped, list(gate.waits.values()))


def _candidates(
    conn: sqlite3.Connection, params: JobClaimParams, now: float, gate: ClaimRoom | None
) -> Iterator[sqlite3.Row]:
    """Due waiting jobs in claim order, whole rows (a plain job's Job is built from its row).
    Pages continue by keyset, so jobs this claim has already moved out of the waiting states do
    not shift the next page. With a gate, each page leaves out the queues, tasks and keys that
    had no room left when it was read."""
    # A little more than the limit: a few candidates may be skipped for held singleton keys;
    # more pages follow by keyset if many are.
    page = params.limit + 8
    query = "job_list_claim_candidates"
    if params.queues is not None:
        query = "job_list_claim_candidates_in_queues"
    queues = list(params.queues or ())
    if gate is not None:
        query = "job_list_claim_candidates_limited"
        if params.queues is None:
            queues = [row["queue"] for row in fetch(conn, "job_get_waiting_queues")]
    values: dict[str, object] = {
        "now": now,
        "page": page,
        "queues": json.dumps(queues),
        "after_id": None,
        "after_priority": None,
        "after_run_at": None,
    }
    while True:
        if gate is not None:
            blocked = gate.blocked_queues
            values.update(
                queues=json.dumps([queue for queue in queues if queue not in blocked]),
                blocked_tasks=json.dumps(gate.blocked_tasks),
                blocked_keys=json.dumps(sorted(gate.blocked_keys)),
            )
        rows = conn.execute(QUERIES[query], values).fetchall()
        yield from rows
        if len(rows) < page:
            return
        last = rows[-1]
        values.update(
            after_id=last["id"], after_priority=last["priority"], after_run_at=last["run_at"]
        )


def _consider(conn: sqlite3.Connection, claim: _Claim, candidate: sqlite3.Row) -> bool:
    """Start a singleton candidate if its key is free; True when it started."""
    job_id = int(candidate["id"])
    key: str = candidate["singleton_key"]
    if key not in claim.held:
        # Read the lease before writing it: a claim whose keys are all held writes nothing,
        # so it never takes the write lock (Engine.write_if_needed).
        holder = fetch_one(conn, "lease_get", {"key": key})
        if holder is None or holder["owner"] is None or holder["expires_at"] is None or float(
            holder["expires_at"]
        ) <= claim.now:
            granted = fetch_one(conn, "lease_grant", {
                "key": key,
                "owner": claim.params.worker_id,
                "job_id": job_id,
                "now": claim.now,
                "expires_at": claim.lease_expires_at,
            })
            if granted is not None:  # always, in the same transaction as the read
                claim.held[key] = job_id
                claim.claimed.append(_start(conn, claim, job_id, fence=int(granted["fence"])))
                return True
        claim.held[key] = None if holder is None else holder["job_id"]
        if holder is not None and holder["expires_at"] is not None and holder_overdue(
            float(holder["expires_at"]) - claim.now, claim.params.lease_ttl
        ):
            claim.overdue.add(key)
    first_run_of_slot = candidate["schedule"] is not None and candidate["attempt"] == 0
    if first_run_of_slot and candidate["overlap"] == Overlap.SKIP and key not in claim.overdue:
        claim.skipped.append(_skip(conn, claim, job_id, key))
    # Otherwise (buffer_one, retries, plain singleton jobs) the job waits for the key.
    return False


def _start(conn: sqlite3.Connection, claim: _Claim, job_id: int, fence: int | None) -> Job:
    row = fetch_one(
        conn,
        "job_claim_start",
        {
            "id": job_id,
            "owner": claim.params.worker_id,
            "lease_expires_at": claim.lease_expires_at,
            "fence": fence,
            "now": claim.now,
        },
    )
    if row is None:
        raise StoreError(f"job {job_id} vanished inside its claim transaction")
    return to_job(row)


def _start_plain(conn: sqlite3.Connection, claim: _Claim, rows: list[sqlite3.Row]) -> list[Job]:
    values = {
        "ids": json.dumps([row["id"] for row in rows]),
        "owner": claim.params.worker_id,
        "lease_expires_at": claim.lease_expires_at,
        "now": claim.now,
    }
    if conn.execute(QUERIES["job_claim_start_many"], values).rowcount != len(rows):
        raise StoreError("claimed jobs vanished inside their claim transaction")
    return started_jobs(rows, json_text=True, owner=claim.params.worker_id,
                        lease_expires_at=as_required_datetime(claim.lease_expires_at),
                        started_at=as_required_datetime(claim.now))


def _skip(conn: sqlite3.Connection, claim: _Claim, job_id: int, key: str) -> Job:
    holder = claim.held.get(key)
    note = lifecycle.skipped_note(key, holder)
    error = JobError(attempt=0, at=claim.params.now, kind=ErrorKind.CANCELLED, message=note)
    row = fetch_one(
        conn, "job_skip_overlap", {"id": job_id, "now": claim.now, "error": dump_error(error)}
    )
    if row is None:
        raise StoreError(f"job {job_id} vanished inside its claim transaction")
    job = to_job(row)
    set_slot_outcome(claim.d, conn, job, SlotOutcome.SKIPPED_OVERLAP, note, claim.now)
    return job


def finish_job(d: SQLiteDialect, conn: sqlite3.Connection, params: JobFinish) -> bool:
    """Apply a fenced transition out of ``running``; False when the fence is not current."""
    if params.state not in lifecycle.FINISH_TARGETS:  # the hot path: only a membership test
        lifecycle.check_finish_target(params.state)
    now = to_epoch(params.now)
    target = fetch_one(conn, "job_get_finish_target", finish_target_values(params, now))
    if target is None:
        return False
    retry_at = None
    if params.state == JobState.RETRYABLE:
        retry_at = now if params.retry_at is None else to_epoch(params.retry_at)
    result = None if params.result is None else dump_json(params.result, "job result")
    conn.execute(
        QUERIES["job_finish"],
        {
            "job_id": params.job_id,
            "state": str(params.state),
            "finished_at": now if params.state.finished else None,
            "result": result,
            "error": dump_error(params.error),
            "run_at": retry_at,
            "refund": params.refund_attempt,
        },
    )
    if target["singleton_key"] is not None:
        values = {"key": target["singleton_key"], "fence": params.fence}
        conn.execute(QUERIES["lease_release"], values)
    outcome = lifecycle.SLOT_OUTCOME.get(params.state)
    if outcome is not None and target["schedule"] is not None:
        set_ledger_outcome(
            d,
            conn,
            (target["schedule"], target["slot"]),
            params.job_id,
            outcome,
            lifecycle.finish_note(params.state, params.error),
            now,
        )
    return True


def finish_jobs(
    d: SQLiteDialect, conn: sqlite3.Connection, batch: Sequence[JobFinish]
) -> list[bool]:
    """Several finishes in one transaction: the plain successes (no key, no slot) in one
    statement, each under its own fence; every other finish, and any success that statement
    did not take, through :func:`finish_job`, which checks its fence again."""
    plain = [params for params in batch if is_plain_success(params)]
    if not plain:
        return [finish_job(d, conn, params) for params in batch]
    now = plain[0].now  # a batch's finishes usually share one reading of the clock
    done = json.dumps([
        [params.job_id, params.fence,
         None if params.result is None else dump_json(params.result, "job result"),
         None if params.now is now else to_epoch(params.now)]
        for params in plain
    ])
    values = {"done": done, "now": to_epoch(now)}
    changed = conn.execute(QUERIES["job_finish_plain_many"], values).rowcount
    if changed == len(plain):  # all of them: the common case
        return [is_plain_success(params) or finish_job(d, conn, params) for params in batch]
    rows = conn.execute(QUERIES["job_list_plain_finished"], values).fetchall()
    recorded = {(row[0], row[1]) for row in rows}
    return [(params.job_id, params.fence) in recorded or finish_job(d, conn, params)
            for params in batch]


def renew_leases(
    conn: sqlite3.Connection,
    worker_id: str,
    now: datetime,
    ttl: float,
    leases: Sequence[LeaseRenewal],
) -> dict[int, RenewResult]:
    expires_at = to_epoch(now) + ttl
    results: dict[int, RenewResult] = {}
    for lease in leases:
        values = {
            "job_id": lease.job_id,
            "fence": lease.fence,
            "owner": worker_id,
            "lease_expires_at": expires_at,
        }
        row = fetch_one(conn, "job_lease_renew", values)
        if row is None:
            status = fetch_one(conn, "job_get_lease_status", {"job_id": lease.job_id})
            cancel = bool(status is not None and status["cancel_requested"])
            results[lease.job_id] = RenewResult(renewed=False, cancel_requested=cancel)
            continue
        if row["singleton_key"] is not None:
            conn.execute(
                QUERIES["lease_extend"],
                {
                    "key": row["singleton_key"],
                    "fence": lease.fence,
                    "owner": worker_id,
                    "expires_at": expires_at,
                },
            )
        results[lease.job_id] = RenewResult(
            renewed=True,
            cancel_requested=bool(row["cancel_requested"]),
            lease_expires_at=as_datetime(row["lease_expires_at"]),
        )
    return results


def elect_leader(
    conn: sqlite3.Connection, worker_id: str, now: datetime, ttl: float
) -> LeaderState:
    """Renew the leader lease if ``worker_id`` holds it, take it if it is free or expired (a new
    term), otherwise report the holder."""
    now_ts = to_epoch(now)
    expires_at = now_ts + ttl
    current = fetch_one(conn, "lease_get", {"key": LEADER_LEASE_KEY})
    if (
        current is not None
        and current["owner"] == worker_id
        and current["expires_at"] is not None
        and current["expires_at"] > now_ts
    ):
        values = {
            "key": LEADER_LEASE_KEY,
            "fence": current["fence"],
            "owner": worker_id,
            "expires_at": expires_at,
        }
        conn.execute(QUERIES["lease_extend"], values)
        return LeaderState(worker_id, int(current["fence"]), as_datetime(expires_at), True)
    granted = fetch_one(
        conn,
        "lease_grant",
        {
            "key": LEADER_LEASE_KEY,
            "owner": worker_id,
            "job_id": None,
            "now": now_ts,
            "expires_at": expires_at,
        },
    )
    if granted is not None:
        return LeaderState(worker_id, int(granted["fence"]), as_datetime(expires_at), True)
    if current is None:
        raise StoreError("the leader lease was refused but has no row")
    return LeaderState(
        leader_id=current["owner"],
        term=int(current["fence"]),
        expires_at=as_datetime(current["expires_at"]),
        is_leader=False,
    )

