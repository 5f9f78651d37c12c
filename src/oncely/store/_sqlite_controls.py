"""Queue controls of the SQLite store: declarations, pause, usage, and the gate of a claim.

The rules are in :mod:`oncely.store.base` ("Queue controls"), the arithmetic in
:mod:`oncely.store.limits`. Every function runs on a connection the caller has put in the right
transaction; a claim's gate is opened, used and logged inside the claim's ``BEGIN IMMEDIATE``,
which is what makes counting and starting atomic across processes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime

from oncely.errors import ConfigError
from oncely.store._sqlite_jobs import Q, fetch_one, retry_job
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
from oncely.store.rows import as_datetime, dump_json, load_json, to_epoch
from oncely.types import Job, JobState


def to_control(row: sqlite3.Row) -> Control:
    return Control(
        kind=ControlKind(row["kind"]),
        name=row["name"],
        paused=bool(row["paused"]),
        max_running=row["max_running"],
        max_per_key=row["max_per_key"],
        rate_limit=row["rate_limit"],
        rate_window=row["rate_window"],
        retention=load_json(row["retention"], json_text=True) or {},
        spec_hash=row["spec_hash"],
        declared_at=as_datetime(row["declared_at"]),
        updated_at=as_datetime(row["updated_at"]),
        rate_seq=int(row["rate_seq"]),
    )


def to_claim_control(row: sqlite3.Row) -> Control:
    """A control as a claim needs it (``control_active``: no retention, no timestamps)."""
    return Control(ControlKind(row["kind"]), row["name"], bool(row["paused"]), row["max_running"],
                   row["max_per_key"], row["rate_limit"], row["rate_window"],
                   rate_seq=int(row["rate_seq"]))


def list_controls(conn: sqlite3.Connection) -> list[Control]:
    return [to_control(row) for row in conn.execute(Q["control_list"]).fetchall()]


def upsert_control(conn: sqlite3.Connection, params: ControlUpsert) -> UpsertOutcome:
    values = {
        "kind": str(params.kind),
        "name": params.name,
        "max_running": params.max_running,
        "max_per_key": params.max_per_key,
        "rate_limit": params.rate_limit,
        "rate_window": params.rate_window,
        "retention": dump_json(params.retention, f"retention of {params.kind} {params.name!r}"),
        "spec_hash": params.spec_hash,
        "now": to_epoch(params.now),
    }
    current = fetch_one(conn, "control_get", values)
    if current is None:
        conn.execute(Q["control_insert"], values)
        return UpsertOutcome.CREATED
    if current["spec_hash"] != params.spec_hash:
        conn.execute(Q["control_update"], values)
        if (current["rate_limit"], current["rate_window"]) != (params.rate_limit,
                                                                params.rate_window):
            conn.execute(Q["rate_ring_clear"], {"scope": f"{params.kind}:{params.name}"})
        return UpsertOutcome.UPDATED
    conn.execute(Q["control_declared"], values)
    return UpsertOutcome.UNCHANGED


def pause_queue(conn: sqlite3.Connection, queue: str, paused: bool, now: datetime) -> Control:
    row = fetch_one(conn, "control_pause", {"name": queue, "paused": paused, "now": to_epoch(now)})
    assert row is not None
    return to_control(row)


def read_usage(
    conn: sqlite3.Connection,
    controls: Sequence[Control],
    keys: Sequence[str] = (),
    depth: int = 1,
) -> ControlUsage:
    queues, slots, tasks = usage_request(controls, depth)
    running: dict[str, int] = {}
    if queues:
        rows = conn.execute(Q["control_running_queues"], {"queues": json.dumps(queues)})
        running = {row["name"]: int(row["running"]) for row in rows.fetchall()}
    ring: dict[str, dict[int, datetime]] = {}
    if slots:
        rows = conn.execute(Q["rate_ring_read"], {"slots": json.dumps(slots)})
        for row in rows.fetchall():
            logged = as_datetime(row["started_at"])
            assert logged is not None
            ring.setdefault(row["scope"], {})[int(row["slot"])] = logged
    key_running: dict[str, int] = {}
    if tasks or keys:
        values = {"tasks": json.dumps(tasks), "keys": json.dumps(list(keys))}
        rows = conn.execute(Q["control_running_keys"], values)
        key_running = {row["name"]: int(row["running"]) for row in rows.fetchall()}
    return ControlUsage(running, ring, key_running)


def open_gate(conn: sqlite3.Connection, params: JobClaimParams) -> Gate | None:
    """The claim's gate, or None when no control applies to it (the unlimited fast path)."""
    active = [to_claim_control(row) for row in conn.execute(Q["control_active"]).fetchall()]
    controls = relevant(active, params.queues)
    if not controls:
        return None
    usage = read_usage(conn, controls, depth=params.limit)
    return Gate(controls, usage, params.now, depth=params.limit)


def log_starts(conn: sqlite3.Connection, gate: Gate, started: Sequence[Job]) -> None:
    """Write the claim's starts into their scopes' rate rings and move the rings on."""
    entries = gate.ring_entries((job.queue, job.task, job.id) for job in started)
    if not entries:
        return
    conn.execute(Q["rate_ring_log"], {"entries": json.dumps(entries), "now": to_epoch(gate.now)})
    for scope, count in ring_advance(entries).items():
        kind, _, name = scope.partition(":")
        conn.execute(Q["rate_seq_advance"], {"kind": kind, "name": name, "count": count})


# dead letters and retention -----------------------------------------------------------------------


def finished_queues(conn: sqlite3.Connection) -> list[str]:
    return [row["queue"] for row in conn.execute(Q["job_finished_queues"]).fetchall()]


def finished_cutoff(
    conn: sqlite3.Connection, queue: str, state: JobState, keep: int
) -> datetime | None:
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    row = fetch_one(
        conn, "job_finished_cutoff", {"queue": queue, "state": str(state), "skip": keep - 1}
    )
    return None if row is None else as_datetime(row["finished_at"])


def retry_failed(conn: sqlite3.Connection, params: RetryFailed) -> RetryFailedResult:
    """One batch of dead letters back to available; a job whose unique key another unfinished
    job holds stays failed (SQLite undoes just that statement)."""
    values = {
        "after_id": params.after_id,
        "queue": params.queue,
        "task": params.task,
        "limit": params.limit,
    }
    ids = [int(row["id"]) for row in conn.execute(Q["job_failed_batch"], values).fetchall()]
    retried: list[Job] = []
    conflicts: list[int] = []
    for job_id in ids:
        try:
            retried.append(retry_job(conn, job_id, params.now))
        except ConfigError:
            conflicts.append(job_id)
    return RetryFailedResult(retried, conflicts, ids[-1] if ids else None)
