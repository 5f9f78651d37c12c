"""The observability section of the PostgreSQL store: executions, ledger and queue counts, fleet
events and anomalies (tables and triggers in migration 0002, SQL in ``sql/postgres/observe.sql``).

Each function runs on a connection the caller has put in a transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from oncely.store._observe_rows import (
    anomaly_from_row,
    event_from_row,
    execution_count_from_row,
    execution_from_row,
    ledger_count_from_row,
    waiting_from_row,
)
from oncely.store._pg_jobs import execute, fetch, fetch_one
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
from oncely.store.rows import dump_json, utc

Conn = psycopg.Connection[Any]


def execution_counts(conn: Conn, window: ExecutionWindow) -> list[ExecutionCount]:
    values = {
        "since": utc(window.since),
        "until": utc(window.until),
        "task": window.task,
        "bucket": window.bucket_seconds,
    }
    return [execution_count_from_row(row) for row in fetch(conn, "execution_counts", values)]


def execution_overlaps(conn: Conn, task: str, since: datetime, until: datetime) -> int:
    values = {"task": task, "since": utc(since), "until": utc(until)}
    row = fetch_one(conn, "execution_overlaps", values)
    return 0 if row is None else int(row["overlaps"])


def execution_list(conn: Conn, job_id: int | None, task: str | None, limit: int) -> list[Execution]:
    values = {"job_id": job_id, "task": task, "limit": limit}
    return [execution_from_row(row) for row in fetch(conn, "execution_list", values)]


def execution_durations(conn: Conn, task: str, limit: int) -> list[float]:
    rows = fetch(conn, "execution_durations", {"task": task, "limit": limit})
    return [max(0.0, float(row["seconds"])) for row in rows]


def ledger_counts(
    conn: Conn, since: datetime, until: datetime, schedule: str | None
) -> list[LedgerCount]:
    values = {"since": utc(since), "until": utc(until), "schedule": schedule}
    return [ledger_count_from_row(row) for row in fetch(conn, "ledger_counts", values)]


def job_waiting(conn: Conn, now: datetime) -> list[WaitingGroup]:
    return [waiting_from_row(row) for row in fetch(conn, "job_waiting", {"now": utc(now)})]


def event_record(conn: Conn, params: FleetEventInsert) -> None:
    values = {
        "name": params.name,
        "at": utc(params.at),
        "job_id": params.job_id,
        "task": params.task,
        "subject": params.subject,
        "detail": dump_json(params.detail, f"detail of event {params.name!r}"),
    }
    execute(conn, "event_insert", values)


def event_counts(conn: Conn, since: datetime) -> dict[str, int]:
    rows = fetch(conn, "event_counts", {"since": utc(since)})
    return {row["name"]: int(row["count"]) for row in rows}


def event_list(conn: Conn, name: str | None, limit: int) -> list[FleetEvent]:
    rows = fetch(conn, "event_list", {"name": name, "limit": limit})
    return [event_from_row(row, json_text=False) for row in rows]


def anomaly_raise(conn: Conn, params: AnomalyRaise) -> AnomalyRaiseResult:
    values = {
        "kind": str(params.kind),
        "subject": params.subject,
        "severity": params.severity,
        "summary": params.summary,
        "schedule": params.schedule,
        "ratio": params.ratio,
        "evidence": dump_json(params.evidence, "anomaly evidence"),
        "advice": params.advice,
        "now": utc(params.now),
    }
    row = fetch_one(conn, "anomaly_raise", values)
    assert row is not None  # an upsert always returns its row
    anomaly = anomaly_from_row(row, json_text=False)
    return AnomalyRaiseResult(anomaly, created=anomaly.occurrences == 1)


def anomaly_list(conn: Conn, open_only: bool, limit: int) -> list[Anomaly]:
    rows = fetch(conn, "anomaly_list", {"open_only": open_only, "limit": limit})
    return [anomaly_from_row(row, json_text=False) for row in rows]


def anomaly_get(conn: Conn, anomaly_id: int) -> Anomaly | None:
    row = fetch_one(conn, "anomaly_get", {"id": anomaly_id})
    return None if row is None else anomaly_from_row(row, json_text=False)


def anomaly_resolve(conn: Conn, anomaly_id: int, now: datetime) -> bool:
    return execute(conn, "anomaly_resolve", {"id": anomaly_id, "now": utc(now)}) > 0


def observation_prune(conn: Conn, before: datetime, limit: int) -> int:
    values = {"before": utc(before), "limit": limit}
    queries = ("execution_prune", "event_prune", "anomaly_prune")
    return sum(execute(conn, query, values) for query in queries)
