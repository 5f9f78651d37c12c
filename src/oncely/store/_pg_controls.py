"""Queue controls of the PostgreSQL store: declarations, pause, usage, and the limited part of a
claim.

The rules are in :mod:`oncely.store.base` ("Queue controls"), the arithmetic in
:mod:`oncely.store.limits`. A claim reads the active controls under the shared controls lock
(``control_claim_lock``, then ``control_claim_read`` in a statement of its own, so its
snapshot sees what was committed before the lock was granted). When some apply to it, it locks
their rows ``FOR UPDATE`` before any job row — so claimers of a limited scope take turns — counts
their usage in a later statement (which sees what the previous holder committed), and plans the
limited jobs here; the rest of the claim goes through the usual statements of ``_pg_claim``,
which leave limited scopes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg

from oncely.errors import ConfigError
from oncely.store._pg_jobs import Row, execute, fetch, fetch_one, retry_job
from oncely.store.base import JobClaimParams, RetryFailed, RetryFailedResult, UpsertOutcome
from oncely.store.limits import (
    Control,
    ControlKind,
    ControlUpsert,
    ControlUsage,
    Gate,
    relevant,
    ring_advance,
    usage_request,
)
from oncely.store.rows import dump_json, utc
from oncely.types import Job, JobState

_MAX_PAGES = 4  # candidate pages one claim reads for its limited jobs, at most


def to_control(row: Row) -> Control:
    return Control(
        kind=ControlKind(row["kind"]),
        name=row["name"],
        paused=bool(row["paused"]),
        max_running=row["max_running"],
        max_per_key=row["max_per_key"],
        rate_limit=row["rate_limit"],
        rate_window=row["rate_window"],
        retention=row["retention"] or {},
        spec_hash=row["spec_hash"],
        declared_at=None if row["declared_at"] is None else utc(row["declared_at"]),
        updated_at=None if row["updated_at"] is None else utc(row["updated_at"]),
        rate_seq=int(row["rate_seq"]),
    )


def list_controls(conn: psycopg.Connection[Any]) -> list[Control]:
    return [to_control(row) for row in fetch(conn, "control_list")]


def upsert_control(conn: psycopg.Connection[Any], params: ControlUpsert) -> UpsertOutcome:
    execute(conn, "control_lock_exclusive", {})
    values = {
        "kind": str(params.kind),
        "name": params.name,
        "max_running": params.max_running,
        "max_per_key": params.max_per_key,
        "rate_limit": params.rate_limit,
        "rate_window": params.rate_window,
        "retention": dump_json(params.retention, f"retention of {params.kind} {params.name!r}"),
        "spec_hash": params.spec_hash,
        "now": utc(params.now),
    }
    if fetch(conn, "control_insert", values):
        return UpsertOutcome.CREATED
    current = fetch_one(conn, "control_get", values)
    if current is None or current["spec_hash"] != params.spec_hash:
        execute(conn, "control_update", values)
        if current is None or (current["rate_limit"], current["rate_window"]) != (
            params.rate_limit, params.rate_window
        ):
            execute(conn, "rate_ring_clear", {"scope": f"{params.kind}:{params.name}"})
        return UpsertOutcome.UPDATED
    execute(conn, "control_declared", values)
    return UpsertOutcome.UNCHANGED


def pause_queue(
    conn: psycopg.Connection[Any], queue: str, paused: bool, now: datetime
) -> Control:
    execute(conn, "control_lock_exclusive", {})
    row = fetch_one(conn, "control_pause", {"name": queue, "paused": paused, "now": utc(now)})
    assert row is not None
    return to_control(row)


def read_usage(
    conn: psycopg.Connection[Any],
    controls: Sequence[Control],
    keys: Sequence[str] = (),
    depth: int = 1,
) -> ControlUsage:
    queues, slots, tasks = usage_request(controls, depth)
    values = {
        "queues": queues,
        "ring_scopes": [scope for scope, _ in slots],
        "ring_slots": [slot for _, slot in slots],
        "tasks": tasks,
        "keys": list(keys),
    }
    running: dict[str, int] = {}
    ring: dict[str, dict[int, datetime]] = {}
    key_running: dict[str, int] = {}
    for row in fetch(conn, "control_usage", values):
        name, count = row["name"], int(row["count"])
        if row["what"] == "queue":
            running[name] = count
        elif row["what"] == "ring":
            ring.setdefault(name, {})[count] = utc(row["at"])
        else:
            key_running[name] = count
    return ControlUsage(running, ring, key_running)


def open_gate(conn: psycopg.Connection[Any], params: JobClaimParams) -> Gate | None:
    """Take the shared controls lock; with controls that apply to this claim, lock their rows
    and return its gate (None: the unlimited fast path)."""
    execute(conn, "control_claim_lock", {})
    active = [to_control(row) for row in fetch(conn, "control_claim_read")]
    controls = relevant(active, params.queues)
    if not controls:
        return None
    queues = [c.name for c in controls if c.kind == ControlKind.QUEUE]
    tasks = [c.name for c in controls if c.kind == ControlKind.TASK]
    locked = {
        (row["kind"], row["name"]): int(row["rate_seq"])
        for row in fetch(conn, "control_lock_rows", {"queues": queues, "tasks": tasks})
    }
    # The rings may have moved while this claim waited for the rows: take their position now.
    controls = [replace(c, rate_seq=locked.get((str(c.kind), c.name), c.rate_seq))
                for c in controls]
    usage = read_usage(conn, controls, depth=params.limit)
    return Gate(controls, usage, utc(params.now), depth=params.limit)


@dataclass
class LimitedPlan:
    """The limited candidates one claim admitted (room taken in the gate), and the ones the
    overlap policy may skip; shaped like the singleton plan of ``_pg_claim``."""

    plain: list[Row] = field(default_factory=list)  # admitted, no singleton key
    grants: list[Row] = field(default_factory=list)  # admitted, the first of a free key
    held_skips: list[Row] = field(default_factory=list)
    behind: dict[str, list[Row]] = field(default_factory=dict)


def plan_limited(
    conn: psycopg.Connection[Any], common: dict[str, Any], gate: Gate, limit: int
) -> LimitedPlan:
    plan = LimitedPlan()
    granting: set[str] = set()
    page = limit * 2 + 16
    values: dict[str, Any] = {
        **common,
        "limited_queues": gate.limited_queues,
        "limited_tasks": gate.limited_tasks,
        "page": page,
        "after_id": None,
        "after_priority": None,
        "after_run_at": None,
    }
    for _ in range(_MAX_PAGES):
        values.update(blocked_queues=gate.blocked_queues, blocked_tasks=gate.blocked_tasks,
                      blocked_keys=sorted(gate.blocked_keys))
        rows = fetch(conn, "job_claim_limited_candidates", values)
        for row in rows:
            if len(plan.plain) + len(plan.grants) >= limit:
                return plan
            _consider(plan, gate, granting, row)
        if len(rows) < page:
            return plan
        last = rows[-1]
        values.update(after_id=last["id"], after_priority=last["priority"],
                      after_run_at=last["run_at"])
    return plan


def _consider(plan: LimitedPlan, gate: Gate, granting: set[str], row: Row) -> None:
    job = (row["queue"], row["task"], row["concurrency_key"])
    if not gate.admits(*job):
        return  # it waits, in its place, for the control to have room
    key: str | None = row["singleton_key"]
    if key is not None and (row["key_held"] or key in granting):
        if row["skippable"]:
            if row["key_held"]:
                plan.held_skips.append(row)
            else:
                plan.behind.setdefault(key, []).append(row)
        return  # otherwise it waits for the key, using no room
    gate.take(*job)
    if key is None:
        plan.plain.append(row)
    else:
        granting.add(key)
        plan.grants.append(row)


def log_starts(conn: psycopg.Connection[Any], gate: Gate, started: Sequence[Job]) -> None:
    """Write the claim's starts into their scopes' rate rings and move the rings on."""
    entries = gate.ring_entries((job.queue, job.task, job.id) for job in started)
    if not entries:
        return
    advance = ring_advance(entries)
    values = {
        "now": gate.now,
        "scopes": [scope for scope, _, _ in entries],
        "slots": [slot for _, slot, _ in entries],
        "job_ids": [job_id for _, _, job_id in entries],
        "kinds": [scope.partition(":")[0] for scope in advance],
        "names": [scope.partition(":")[2] for scope in advance],
        "counts": list(advance.values()),
    }
    execute(conn, "rate_ring_log", values)


# dead letters and retention -----------------------------------------------------------------------


def finished_queues(conn: psycopg.Connection[Any]) -> list[str]:
    return [row["queue"] for row in fetch(conn, "job_finished_queues")]


def finished_cutoff(
    conn: psycopg.Connection[Any], queue: str, state: JobState, keep: int
) -> datetime | None:
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    values = {"queue": queue, "state": str(state), "skip": keep - 1}
    row = fetch_one(conn, "job_finished_cutoff", values)
    return None if row is None else utc(row["finished_at"])


def retry_failed(conn: psycopg.Connection[Any], params: RetryFailed) -> RetryFailedResult:
    """One batch of dead letters back to available, each under a savepoint: a job whose unique
    key another unfinished job holds stays failed without undoing the rest."""
    values = {
        "after_id": params.after_id,
        "queue": params.queue,
        "task": params.task,
        "limit": params.limit,
    }
    ids = [int(row["id"]) for row in fetch(conn, "job_failed_batch", values)]
    retried: list[Job] = []
    conflicts: list[int] = []
    for job_id in ids:
        try:
            with conn.transaction():
                retried.append(retry_job(conn, job_id, params.now))
        except ConfigError:
            conflicts.append(job_id)
    return RetryFailedResult(retried, conflicts, ids[-1] if ids else None)
