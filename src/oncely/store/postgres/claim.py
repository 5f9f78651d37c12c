"""The run cycle of the PostgreSQL store: claim (lease grant, fence, overlap policy), fenced
finish, lease renewal and leader election. The state machine is in :mod:`oncely.store.base`.

A claim is one transaction of at most four statements, none of which waits for another claimer:

1. lock the due singleton candidates (``FOR UPDATE SKIP LOCKED``) and read their keys' leases;
   decide which keys to grant and which first runs of slots the overlap policy skips;
2. the hot path: lock and start the due jobs without a key in one ``UPDATE … FROM (SELECT … FOR
   UPDATE SKIP LOCKED)``, admitting only as many as fit in the limit next to the singleton jobs
   that rank ahead of them, so the claim as a whole follows priority order and a backlog of plain
   jobs cannot starve scheduled (singleton) ones;
3. grant the admitted keys (``INSERT … ON CONFLICT (key) DO UPDATE … WHERE free``, fence + 1) and
   start their jobs with the new fences, in one statement;
4. skip: cancel the skipped jobs and mark their slots ``skipped_overlap``.

With queue controls (``controls.py``) the claim first reads them under the shared controls
lock. When some apply, it locks their rows, admits the limited jobs through its gate in claim
order, and lets those rank among the singleton grants ("ahead" of plain jobs) so the claim as a
whole still follows priority order; the statements above then leave limited scopes out. Its
starts are logged under their rate scopes before commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from oncely import lifecycle
from oncely.store.base import (
    LEADER_LEASE_KEY,
    ClaimResult,
    JobClaimParams,
    JobFinish,
    LeaderState,
    LeaseRenewal,
    RenewResult,
)
from oncely.store.ops.jobs import finish_target_values, is_plain_success
from oncely.store.postgres import controls
from oncely.store.postgres.dialect import (
    Row,
    errors_json,
    fetch,
    fetch_one,
    fetch_tuples,
    to_job,
)
from oncely.store.rows import dump_json, jobs_from_tuples, lease_from_row, utc
from oncely.types import ErrorKind, Job, JobError, JobState

_MIN_SCAN = 32  # singleton candidates looked at per claim, at least


@dataclass
class _Plan:
    """What the singleton candidates of one claim turned out to be."""

    grants: list[Row] = field(default_factory=list)  # the first candidate of each free key
    held_skips: list[Row] = field(default_factory=list)  # skippable, their key held by others
    # skippable candidates behind a free key's first candidate: skipped if that key is granted
    behind: dict[str, list[Row]] = field(default_factory=dict)


def _rank(item: Row | Job) -> tuple[int, datetime, int]:
    if isinstance(item, Job):
        return (-item.priority, item.run_at, item.id)
    return (-int(item["priority"]), item["run_at"], int(item["id"]))


def claim_values(params: JobClaimParams) -> dict[str, Any]:
    now = utc(params.now)
    return {
        "now": now,
        "owner": params.worker_id,
        "lease_expires_at": now + timedelta(seconds=params.lease_ttl),
        # a key's holder whose lease runs out before this has missed a renewal (holder_overdue)
        "overdue_before": now + timedelta(seconds=params.lease_ttl / 3),
        "queues": None if params.queues is None else list(params.queues),
        "tasks": None if params.tasks is None else list(params.tasks),
        "excluded_queues": [],
        "excluded_tasks": [],
    }


def claim_fast(conn: psycopg.Connection[Any], params: JobClaimParams) -> ClaimResult | None:
    """The one-statement claim (``job_claim_fast``): the result, or None when queue controls or
    due singleton jobs need :func:`claim_jobs`."""
    if params.limit <= 0:
        return ClaimResult(jobs=[])
    query = "job_claim_fast" if params.queues is None else "job_claim_fast_in_queues"
    names, rows = fetch_tuples(conn, query, {**claim_values(params), "limit": params.limit})
    if rows and rows[0][0]:  # claim_blocked, the first column
        return None
    id_at = names.index("id")
    started = [row for row in rows if row[id_at] is not None]
    return ClaimResult(jobs=sorted(jobs_from_tuples(names, started, json_text=False), key=_rank))


def claim_jobs(conn: psycopg.Connection[Any], params: JobClaimParams) -> ClaimResult:
    if params.limit <= 0:
        return ClaimResult(jobs=[])
    common = claim_values(params)
    now = common["now"]
    gate = controls.open_gate(conn, params)
    limited = controls.LimitedPlan()
    if gate is not None:
        common.update(excluded_queues=gate.limited_queues, excluded_tasks=gate.limited_tasks)
        limited = controls.plan_limited(conn, common, gate, params.limit)
    plan = _plan_singletons(conn, common, params.limit)
    _merge(plan, limited, params.limit)
    ahead = sorted(plan.grants + limited.plain, key=_rank)
    plain = _claim_plain(conn, common, params.limit, ahead)
    started = _start_ahead(conn, common, params.limit, ahead, plain)
    skipped = _skip(conn, now, plan, started)
    jobs = sorted(plain + started, key=_rank)
    if gate is None:
        return ClaimResult(jobs=jobs, skipped_overlap=skipped)
    controls.log_starts(conn, gate, [job for job in jobs if gate.limits(job.queue, job.task)])
    return ClaimResult(jobs, skipped, list(gate.waits.values()))


def _plan_singletons(conn: psycopg.Connection[Any], common: dict[str, Any], limit: int) -> _Plan:
    plan = _Plan()
    seen: set[str] = set()
    scan = max(limit * 2, _MIN_SCAN)
    for row in fetch(conn, "job_list_singleton_candidates", {**common, "scan": scan}):
        key: str = row["singleton_key"]
        if row["key_held"]:
            if row["skippable"]:
                plan.held_skips.append(row)
        elif key not in seen:
            seen.add(key)
            plan.grants.append(row)
        elif row["skippable"]:
            plan.behind.setdefault(key, []).append(row)
        # Anything else (buffer_one, retries, plain singleton jobs) waits for its key.
    del plan.grants[limit:]
    return plan


def _merge(plan: _Plan, limited: controls.LimitedPlan, limit: int) -> None:
    """Fold the limited part's singleton decisions into the plan: one grant per key (a key whose
    jobs sit in a limited and an unlimited scope goes to the better-ranked candidate)."""
    plan.held_skips.extend(limited.held_skips)
    for key, rows in limited.behind.items():
        plan.behind.setdefault(key, []).extend(rows)
    for row in limited.grants:
        key = row["singleton_key"]
        rival = next((grant for grant in plan.grants if grant["singleton_key"] == key), None)
        if rival is None:
            plan.grants.append(row)
            continue
        loser = row
        if _rank(row) < _rank(rival):
            plan.grants[plan.grants.index(rival)] = row
            loser = rival
        if loser["skippable"]:
            plan.behind.setdefault(key, []).append(loser)
    plan.grants.sort(key=_rank)
    del plan.grants[limit:]


def _claim_plain(
    conn: psycopg.Connection[Any], common: dict[str, Any], limit: int, ahead: list[Row]
) -> list[Job]:
    values = {
        **common,
        "limit": limit,
        "ahead_priority": [int(row["priority"]) for row in ahead],
        "ahead_run_at": [row["run_at"] for row in ahead],
        "ahead_id": [int(row["id"]) for row in ahead],
    }
    query = "job_claim_plain" if common["queues"] is None else "job_claim_plain_in_queues"
    if common["excluded_queues"] or common["excluded_tasks"]:
        query = "job_claim_plain_excluding"
    return [to_job(row) for row in fetch(conn, query, values)]


def _start_ahead(
    conn: psycopg.Connection[Any],
    common: dict[str, Any],
    limit: int,
    ahead: list[Row],
    plain: list[Job],
) -> list[Job]:
    """Start the singleton grants and admitted limited jobs that fit in the limit next to the
    plain jobs ranked ahead of them."""
    plain_ranks = [_rank(job) for job in plain]
    fitting = [
        row
        for place, row in enumerate(ahead, start=1)
        if place + sum(1 for rank in plain_ranks if rank < _rank(row)) <= limit
    ]
    grants = [row for row in fitting if row["singleton_key"] is not None]
    singles = [int(row["id"]) for row in fitting if row["singleton_key"] is None]
    started: list[Job] = []
    if grants:
        values = {
            **common,
            "keys": [row["singleton_key"] for row in grants],
            "job_ids": [int(row["id"]) for row in grants],
        }
        started.extend(to_job(row) for row in fetch(conn, "job_claim_grant", values))
    if singles:
        values = {**common, "job_ids": singles}
        started.extend(to_job(row) for row in fetch(conn, "job_claim_start_ids", values))
    return started


def _skip(
    conn: psycopg.Connection[Any], now: datetime, plan: _Plan, started: list[Job]
) -> list[Job]:
    holders = {job.singleton_key: job.id for job in started}
    victims: list[tuple[Row, int | None]] = [(row, row["key_holder"]) for row in plan.held_skips]
    for key, rows in plan.behind.items():
        if key in holders:
            victims.extend((row, holders[key]) for row in rows)
    if not victims:
        return []
    errors = []
    for row, holder in victims:
        note = lifecycle.skipped_note(row["singleton_key"], holder)
        error = JobError(attempt=0, at=now, kind=ErrorKind.CANCELLED, message=note)
        errors.append(errors_json(error))
    values = {"now": now, "job_ids": [int(row["id"]) for row, _ in victims], "errors": errors}
    return sorted((to_job(row) for row in fetch(conn, "job_claim_skip", values)), key=_rank)


# finish -----------------------------------------------------------------------------------------


def finish_job(conn: psycopg.Connection[Any], params: JobFinish) -> bool:
    """Apply a fenced transition out of ``running``; False when the fence is not current."""
    if params.state not in lifecycle.FINISH_TARGETS:  # the hot path: only a membership test
        lifecycle.check_finish_target(params.state)
    now = utc(params.now)
    target = fetch_one(conn, "job_get_finish_target", finish_target_values(params, now))
    if target is None:
        return False
    key = target["singleton_key"]
    # Hold the key's lease row too, so no claim can take it over before we commit.
    if (
        key is not None
        and not params.require_expired_lease
        and fetch_one(conn, "lease_lock_fence", {"key": key, "fence": params.fence}) is None
    ):
        return False
    retry_at = None
    if params.state == JobState.RETRYABLE:
        retry_at = now if params.retry_at is None else utc(params.retry_at)
    outcome = lifecycle.SLOT_OUTCOME.get(params.state)
    values = {
        "job_id": params.job_id,
        "fence": params.fence,
        "now": now,
        "state": str(params.state),
        "finished_at": now if params.state.finished else None,
        "result": None if params.result is None else dump_json(params.result, "job result"),
        "errors": errors_json(params.error),
        "run_at": retry_at,
        "refund": params.refund_attempt,
        "outcome": None if outcome is None else str(outcome),
        "note": lifecycle.finish_note(params.state, params.error),
    }
    return bool(fetch(conn, "job_finish", values))


def finish_plain(
    conn: psycopg.Connection[Any], batch: Sequence[JobFinish], wake: bool = False
) -> set[int]:
    """Successes of jobs without a singleton key or a slot (the bulk of a busy queue), in one
    statement, each under its own fence; with ``wake``, waking claimers of the limited queues
    and tasks they leave. Returns the ids it recorded, or found recorded by an earlier try of
    the same attempt; the others go through :func:`finish_job`, which re-checks each fence."""
    if not batch:
        return set()
    results = [None if p.result is None else dump_json(p.result, "job result") for p in batch]
    rows = fetch(conn, "job_finish_plain_many", {
        "wake": wake,
        "job_ids": int_array([p.job_id for p in batch]),
        "fences": int_array([p.fence for p in batch]),
        # NULL when every job returned nothing (unnest pads a NULL array with NULLs)
        "results": results if any(r is not None for r in results) else None,
        "finished_at": instant_array([p.now for p in batch]),
    })
    done = {int(row["id"]) for row in rows}
    rest = [p for p in batch if p.job_id not in done]
    if rest:  # rare: recorded by an earlier try, or really refused
        again = fetch(conn, "job_find_plain_finished", {
            "job_ids": int_array([p.job_id for p in rest]),
            "fences": int_array([p.fence for p in rest]),
        })
        done.update(int(row["id"]) for row in again)
    return done


def int_array(values: Sequence[int]) -> str:
    """An array literal of whole numbers (cast to ``bigint[]`` in the statement): built in one
    join, where psycopg's list dumper dumps element by element — a few µs per job of a batch."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


def instant_array(values: Sequence[datetime]) -> str:
    """An array literal of instants (cast to ``timestamptz[]``), ISO 8601 in UTC."""
    return "{" + ",".join([f'"{utc(value).isoformat()}"' for value in values]) + "}"


def finish_jobs(
    conn: psycopg.Connection[Any], batch: Sequence[JobFinish], done: set[int] | None = None
) -> list[bool]:
    """Several finishes in one transaction; ``done`` are ids :func:`finish_plain` already
    recorded (plain successes are tried that way first when not given)."""
    if done is None:
        done = finish_plain(conn, [p for p in batch if is_plain_success(p)])
    return [params.job_id in done or finish_job(conn, params) for params in batch]



# leases -----------------------------------------------------------------------------------------


def renew_leases(
    conn: psycopg.Connection[Any],
    worker_id: str,
    now: datetime,
    ttl: float,
    leases: Sequence[LeaseRenewal],
) -> dict[int, RenewResult]:
    values = {
        "owner": worker_id,
        "lease_expires_at": utc(now) + timedelta(seconds=ttl),
        "job_ids": [lease.job_id for lease in leases],
        "fences": [lease.fence for lease in leases],
    }
    results = {
        int(row["id"]): RenewResult(
            renewed=True,
            cancel_requested=bool(row["cancel_requested"]),
            lease_expires_at=utc(row["lease_expires_at"]),
        )
        for row in fetch(conn, "lease_renew", values)
    }
    lost = [lease.job_id for lease in leases if lease.job_id not in results]
    if lost:
        flags = {
            int(row["id"]): bool(row["cancel_requested"])
            for row in fetch(conn, "job_get_cancel_requested", {"job_ids": lost})
        }
        for job_id in lost:
            results[job_id] = RenewResult(renewed=False, cancel_requested=flags.get(job_id, False))
    return results


def elect_leader(
    conn: psycopg.Connection[Any], worker_id: str, now: datetime, ttl: float
) -> LeaderState:
    """Renew the leader lease if ``worker_id`` holds it, take it if it is free or expired (a new
    term), otherwise report the holder."""
    now = utc(now)
    values = {
        "key": LEADER_LEASE_KEY,
        "owner": worker_id,
        "now": now,
        "expires_at": now + timedelta(seconds=ttl),
    }
    row = fetch_one(conn, "leader_elect", values)
    if row is not None:
        return LeaderState(worker_id, int(row["fence"]), utc(row["expires_at"]), True)
    current = fetch_one(conn, "lease_get", {"key": LEADER_LEASE_KEY})
    if current is None:
        return LeaderState(None, 0, None, False)
    lease = lease_from_row(current)
    return LeaderState(lease.owner, lease.fence, lease.expires_at, False)

