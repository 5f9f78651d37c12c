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

from oncely.store._sqlite_jobs import Q, fetch_one
from oncely.store.base import Job, JobClaimParams, UpsertOutcome
from oncely.store.limits import (
    Control,
    ControlKind,
    ControlUpsert,
    ControlUsage,
    Gate,
    StartWindow,
    relevant,
    usage_request,
)
from oncely.store.rows import as_datetime, dump_json, load_json, to_epoch


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
    )


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
        return UpsertOutcome.UPDATED
    conn.execute(Q["control_declared"], values)
    return UpsertOutcome.UNCHANGED


def pause_queue(conn: sqlite3.Connection, queue: str, paused: bool, now: datetime) -> Control:
    row = fetch_one(conn, "control_pause", {"name": queue, "paused": paused, "now": to_epoch(now)})
    assert row is not None
    return to_control(row)


def read_usage(
    conn: sqlite3.Connection, controls: Sequence[Control], now: datetime, keys: Sequence[str] = ()
) -> ControlUsage:
    queues, windows, tasks = usage_request(controls, now)
    running: dict[str, int] = {}
    if queues:
        rows = conn.execute(Q["control_running_queues"], {"queues": json.dumps(queues)})
        running = {row["name"]: int(row["running"]) for row in rows.fetchall()}
    starts: dict[str, StartWindow] = {}
    if windows:
        pairs = json.dumps([[scope, to_epoch(since)] for scope, since in windows])
        rows = conn.execute(Q["control_window_starts"], {"windows": pairs})
        starts = {row["scope"]: StartWindow(int(row["count"]), as_datetime(row["oldest"]))
                  for row in rows.fetchall()}
    key_running: dict[str, int] = {}
    if tasks or keys:
        values = {"tasks": json.dumps(tasks), "keys": json.dumps(list(keys))}
        rows = conn.execute(Q["control_running_keys"], values)
        key_running = {row["name"]: int(row["running"]) for row in rows.fetchall()}
    return ControlUsage(running, starts, key_running)


def open_gate(conn: sqlite3.Connection, params: JobClaimParams) -> Gate | None:
    """The claim's gate, or None when no control applies to it (the unlimited fast path)."""
    active = [to_control(row) for row in conn.execute(Q["control_active"]).fetchall()]
    controls = relevant(active, params.queues)
    if not controls:
        return None
    return Gate(controls, read_usage(conn, controls, params.now), params.now)


def log_starts(conn: sqlite3.Connection, gate: Gate, started: Sequence[Job]) -> None:
    """Log the claim's starts under their rate scopes and forget what left the windows."""
    rows = [[scope, job.id] for job in started for scope in gate.rate_scopes(job.queue, job.task)]
    if not rows:
        return
    now = to_epoch(gate.now)
    conn.execute(Q["start_log"], {"rows": json.dumps(rows), "now": now})
    touched = {scope for scope, _ in rows}
    for scope, since in gate.forget_before():
        if scope in touched:
            conn.execute(Q["start_forget"], {"scope": scope, "before": to_epoch(since)})
