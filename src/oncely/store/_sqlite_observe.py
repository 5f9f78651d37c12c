"""The observability section of the SQLite store: executions, ledger and queue counts, fleet
events and anomalies (tables and triggers in migration 0002, SQL in ``sql/sqlite/observe.sql``).

Each function runs on a connection the caller has put in the right transaction.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from oncely.store._observe_rows import (
    anomaly_from_row,
    event_from_row,
    execution_count_from_row,
    execution_from_row,
    ledger_count_from_row,
    waiting_from_row,
)
from oncely.store._sqlite_jobs import Q, fetch_one
from oncely.store.observability import (
    Anomaly,
    AnomalyRaise,
    AnomalyRaiseResult,
    Execution,
    ExecutionCount,
    ExecutionWindow,
    FleetEvent,
    FleetEventInsert,
    LedgerCount,
    WaitingGroup,
)
from oncely.store.rows import dump_json, to_epoch


def execution_counts(conn: sqlite3.Connection, window: ExecutionWindow) -> list[ExecutionCount]:
    values = {
        "since": to_epoch(window.since),
        "until": to_epoch(window.until),
        "task": window.task,
        "bucket": window.bucket_seconds,
    }
    rows = conn.execute(Q["execution_counts"], values).fetchall()
    return [execution_count_from_row(row) for row in rows]


def execution_overlaps(
    conn: sqlite3.Connection, task: str, since: datetime, until: datetime
) -> int:
    values = {"task": task, "since": to_epoch(since), "until": to_epoch(until)}
    return int(conn.execute(Q["execution_overlaps"], values).fetchone()[0])


def execution_list(
    conn: sqlite3.Connection, job_id: int | None, task: str | None, limit: int
) -> list[Execution]:
    values = {"job_id": job_id, "task": task, "limit": limit}
    return [execution_from_row(row) for row in conn.execute(Q["execution_list"], values)]


def execution_durations(conn: sqlite3.Connection, task: str, limit: int) -> list[float]:
    rows = conn.execute(Q["execution_durations"], {"task": task, "limit": limit}).fetchall()
    return [max(0.0, float(row["seconds"])) for row in rows]


def ledger_counts(
    conn: sqlite3.Connection, since: datetime, until: datetime, schedule: str | None
) -> list[LedgerCount]:
    values = {"since": to_epoch(since), "until": to_epoch(until), "schedule": schedule}
    return [ledger_count_from_row(row) for row in conn.execute(Q["ledger_counts"], values)]


def job_waiting(conn: sqlite3.Connection, now: datetime) -> list[WaitingGroup]:
    rows = conn.execute(Q["job_waiting"], {"now": to_epoch(now)}).fetchall()
    return [waiting_from_row(row) for row in rows]


def event_record(conn: sqlite3.Connection, params: FleetEventInsert) -> None:
    values = {
        "name": params.name,
        "at": to_epoch(params.at),
        "job_id": params.job_id,
        "task": params.task,
        "subject": params.subject,
        "detail": dump_json(params.detail, f"detail of event {params.name!r}"),
    }
    conn.execute(Q["event_insert"], values)


def event_counts(conn: sqlite3.Connection, since: datetime) -> dict[str, int]:
    rows = conn.execute(Q["event_counts"], {"since": to_epoch(since)}).fetchall()
    return {row["name"]: int(row["count"]) for row in rows}


def event_list(conn: sqlite3.Connection, name: str | None, limit: int) -> list[FleetEvent]:
    rows = conn.execute(Q["event_list"], {"name": name, "limit": limit}).fetchall()
    return [event_from_row(row, json_text=True) for row in rows]


def anomaly_raise(conn: sqlite3.Connection, params: AnomalyRaise) -> AnomalyRaiseResult:
    values = {
        "kind": str(params.kind),
        "subject": params.subject,
        "severity": params.severity,
        "summary": params.summary,
        "schedule": params.schedule,
        "ratio": params.ratio,
        "evidence": dump_json(params.evidence, "anomaly evidence"),
        "advice": params.advice,
        "now": to_epoch(params.now),
    }
    row = fetch_one(conn, "anomaly_raise", values)
    assert row is not None  # an upsert always returns its row
    anomaly = anomaly_from_row(row, json_text=True)
    return AnomalyRaiseResult(anomaly, created=anomaly.occurrences == 1)


def anomaly_list(conn: sqlite3.Connection, open_only: bool, limit: int) -> list[Anomaly]:
    rows = conn.execute(Q["anomaly_list"], {"open_only": open_only, "limit": limit}).fetchall()
    return [anomaly_from_row(row, json_text=True) for row in rows]


def anomaly_get(conn: sqlite3.Connection, anomaly_id: int) -> Anomaly | None:
    row = fetch_one(conn, "anomaly_get", {"id": anomaly_id})
    return None if row is None else anomaly_from_row(row, json_text=True)


def anomaly_resolve(conn: sqlite3.Connection, anomaly_id: int, now: datetime) -> bool:
    values = {"id": anomaly_id, "now": to_epoch(now)}
    return conn.execute(Q["anomaly_resolve"], values).rowcount > 0


def observation_prune(conn: sqlite3.Connection, before: datetime, limit: int) -> int:
    values = {"before": to_epoch(before), "limit": limit}
    queries = ("execution_prune", "event_prune", "anomaly_prune")
    return sum(conn.execute(Q[query], values).rowcount for query in queries)
