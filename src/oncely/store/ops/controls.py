"""Queue controls, written once for every dialect: declarations, pause and listing. What a claim
does with them (its gate, usage and rate-ring log) is the dialect's own (``sqlite/controls.py``,
``postgres/controls.py``); the rules are in :mod:`oncely.store.base` ("Queue controls") and the
arithmetic in :mod:`oncely.store.controls`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from oncely.store.base import UpsertOutcome
from oncely.store.controls import Control, ControlKind, ControlUpsert, scope_of
from oncely.store.dialect import Dialect, Row
from oncely.store.rows import as_datetime, dump_json, load_json


def to_control(row: Row, *, json_text: bool) -> Control:
    return Control(
        kind=ControlKind(row["kind"]),
        name=row["name"],
        paused=bool(row["paused"]),
        max_running=row["max_running"],
        max_per_key=row["max_per_key"],
        rate_limit=row["rate_limit"],
        rate_window=row["rate_window"],
        retention=load_json(row["retention"], json_text=json_text) or {},
        spec_hash=row["spec_hash"],
        declared_at=as_datetime(row["declared_at"]),
        updated_at=as_datetime(row["updated_at"]),
        rate_seq=int(row["rate_seq"]),
    )


def list_controls(d: Dialect, conn: Any) -> list[Control]:
    return [to_control(row, json_text=d.json_text) for row in d.fetch(conn, "control_list")]


def upsert_control(d: Dialect, conn: Any, params: ControlUpsert) -> UpsertOutcome:
    """Declare a control; a changed rate limit empties its scope's ring."""
    d.lock_controls(conn)
    values = {
        "kind": str(params.kind),
        "name": params.name,
        "max_running": params.max_running,
        "max_per_key": params.max_per_key,
        "rate_limit": params.rate_limit,
        "rate_window": params.rate_window,
        "retention": dump_json(params.retention, f"retention of {params.kind} {params.name!r}"),
        "spec_hash": params.spec_hash,
        "now": d.instant(params.now),
    }
    if d.fetch(conn, "control_insert", values):
        return UpsertOutcome.CREATED
    current = d.fetch_one(conn, "control_get", values)
    if current is None or current["spec_hash"] != params.spec_hash:
        d.execute(conn, "control_update", values)
        if current is None or (current["rate_limit"], current["rate_window"]) != (
            params.rate_limit, params.rate_window
        ):
            d.execute(conn, "rate_ring_clear", {"scope": scope_of(params.kind, params.name)})
        return UpsertOutcome.UPDATED
    d.execute(conn, "control_declare", values)
    return UpsertOutcome.UNCHANGED


def pause_queue(d: Dialect, conn: Any, queue: str, paused: bool, now: datetime) -> Control:
    d.lock_controls(conn)
    values = {"name": queue, "paused": paused, "now": d.instant(now)}
    row = d.fetch_one(conn, "control_pause", values)
    assert row is not None  # an upsert always returns its row
    return to_control(row, json_text=d.json_text)
