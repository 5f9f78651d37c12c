"""Queue controls in a PostgreSQL claim: the usage they are measured against, the claim's gate,
the limited part of the claim and the log of its starts (declarations and pauses are written once
in ``store/ops``).

The rules are in :mod:`oncely.store.base` ("Queue controls"), the arithmetic in
:mod:`oncely.store.controls`. A claim reads the active controls under the shared controls lock
(``control_claim_lock``, then ``control_list_for_claim`` in a statement of its own, so its
snapshot sees what was committed before the lock was granted). When some apply to it, it locks
their rows ``FOR UPDATE`` before any job row — so claimers of a limited scope take turns — counts
their usage in a later statement (which sees what the previous holder committed), and plans the
limited jobs here; the rest of the claim goes through the usual statements of ``claim.py``,
which leave limited scopes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg

from oncely.store.base import JobClaimParams
from oncely.store.controls import (
    ClaimRoom,
    Control,
    ControlKind,
    ControlUsage,
    relevant,
    ring_advance,
    usage_request,
)
from oncely.store.ops.controls import to_control
from oncely.store.postgres.dialect import Row, execute, fetch
from oncely.store.rows import utc
from oncely.types import Job

_MAX_PAGES = 4  # candidate pages one claim reads for its limited jobs, at most


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
    return usage_of(fetch(conn, "control_read_usage", values))


def usage_of(rows: Sequence[Row]) -> ControlUsage:
    """The usage in the rows of ``control_read_usage`` (or ``control_read_usage_for_claim``)."""
    running: dict[str, int] = {}
    ring: dict[str, dict[int, datetime]] = {}
    key_running: dict[str, int] = {}
    for row in rows:
        name, count = row["name"], int(row["count"])
        if row["what"] == "queue":
            running[name] = count
        elif row["what"] == "ring":
            ring.setdefault(name, {})[count] = utc(row["at"])
        else:
            key_running[name] = count
    return ControlUsage(running, ring, key_running)


def open_gate(conn: psycopg.Connection[Any], params: JobClaimParams) -> ClaimRoom | None:
    """Take the shared controls lock; with controls that apply to this claim, lock their rows
    and return its gate (None: the unlimited fast path)."""
    execute(conn, "control_claim_lock", {})
    active = [to_control(row, json_text=False) for row in fetch(conn, "control_list_for_claim")]
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
    return ClaimRoom(controls, usage, utc(params.now), depth=params.limit)


@dataclass
class LimitedPlan:
    """The limited candidates one claim admitted (room taken in the gate), and the ones the
    overlap policy may skip; shaped like the singleton plan of ``claim.py``."""

    plain: list[Row] = field(default_factory=list)  # admitted, no singleton key
    grants: list[Row] = field(default_factory=list)  # admitted, the first of a free key
    held_skips: list[Row] = field(default_factory=list)
    behind: dict[str, list[Row]] = field(default_factory=dict)


def plan_limited(
    conn: psycopg.Connection[Any], common: dict[str, Any], gate: ClaimRoom, limit: int
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
        rows = fetch(conn, "job_list_limited_candidates", values)
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


def _consider(plan: LimitedPlan, gate: ClaimRoom, granting: set[str], row: Row) -> None:
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


def log_starts(conn: psycopg.Connection[Any], gate: ClaimRoom, started: Sequence[Job]) -> None:
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


