"""Queue controls in a SQLite claim: the usage they are measured against, the claim's gate, and
the log of its starts in the rate rings.

The rules are in :mod:`oncely.store.base` ("Queue controls"), the arithmetic in
:mod:`oncely.store.controls`; declarations and pauses are written once in ``store/ops``. A
claim's gate is opened, used and logged inside the claim's ``BEGIN IMMEDIATE``, which is what
makes counting and starting atomic across processes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime

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
from oncely.store.rows import as_datetime, to_epoch
from oncely.store.sqlite.dialect import QUERIES
from oncely.types import Job


def to_claim_control(row: sqlite3.Row) -> Control:
    """A control as a claim needs it (``control_list_active``: no retention, no timestamps)."""
    return Control(ControlKind(row["kind"]), row["name"], bool(row["paused"]), row["max_running"],
                   row["max_per_key"], row["rate_limit"], row["rate_window"],
                   rate_seq=int(row["rate_seq"]))


def read_usage(
    conn: sqlite3.Connection,
    controls: Sequence[Control],
    keys: Sequence[str] = (),
    depth: int = 1,
) -> ControlUsage:
    queues, slots, tasks = usage_request(controls, depth)
    running: dict[str, int] = {}
    if queues:
        rows = conn.execute(QUERIES["control_count_running_queues"], {"queues": json.dumps(queues)})
        running = {row["name"]: int(row["running"]) for row in rows.fetchall()}
    ring: dict[str, dict[int, datetime]] = {}
    if slots:
        rows = conn.execute(QUERIES["rate_ring_read"], {"slots": json.dumps(slots)})
        for row in rows.fetchall():
            logged = as_datetime(row["started_at"])
            assert logged is not None
            ring.setdefault(row["scope"], {})[int(row["slot"])] = logged
    key_running: dict[str, int] = {}
    if tasks or keys:
        values = {"tasks": json.dumps(tasks), "keys": json.dumps(list(keys))}
        rows = conn.execute(QUERIES["control_count_running_keys"], values)
        key_running = {row["name"]: int(row["running"]) for row in rows.fetchall()}
    return ControlUsage(running, ring, key_running)


def open_gate(conn: sqlite3.Connection, params: JobClaimParams) -> ClaimRoom | None:
    """The claim's gate, or None when no control applies to it (the unlimited fast path)."""
    rows = conn.execute(QUERIES["control_list_active"]).fetchall()
    active = [to_claim_control(row) for row in rows]
    controls = relevant(active, params.queues)
    if not controls:
        return None
    usage = read_usage(conn, controls, depth=params.limit)
    return ClaimRoom(controls, usage, params.now, depth=params.limit)


def log_starts(conn: sqlite3.Connection, gate: ClaimRoom, started: Sequence[Job]) -> None:
    """Write the claim's starts into their scopes' rate rings and move the rings on."""
    entries = gate.ring_entries((job.queue, job.task, job.id) for job in started)
    if not entries:
        return
    values = {"entries": json.dumps(entries), "now": to_epoch(gate.now)}
    conn.execute(QUERIES["rate_ring_log"], values)
    for scope, count in ring_advance(entries).items():
        kind, _, name = scope.partition(":")
        conn.execute(QUERIES["rate_seq_advance"], {"kind": kind, "name": name, "count": count})


