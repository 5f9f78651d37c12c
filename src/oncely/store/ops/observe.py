"""The observability section of the store: executions, ledger and queue counts, fleet events and
anomalies (tables and triggers in migration 0002, SQL in each dialect's ``sql/observe.sql``).

Written once for every dialect: each function takes the store's dialect and a connection the
caller has put in a transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from oncely.store._observe_rows import (
    anomaly_from_row,
    event_from_row,
    execution_count_from_row,
    execution_from_row,
    ledger_count_from_row,
    waiting_from_row,
)
from oncely.store.dialect import Dialect
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
from oncely.store.rows import dump_json


def execution_counts(d: Dialect, conn: Any, window: ExecutionWindow) -> list[ExecutionCount]:
    values = {
        "since": d.instant(window.since),
        "until": d.instant(window.until),
        "task": window.task,
        "bucket": window.bucket_seconds,
    }
    return [execution_count_from_row(row) for row in d.fetch(conn, "execution_count", values)]


def execution_overlaps(d: Dialect, conn: Any, task: str, since: datetime, until: datetime) -> int:
    values = {"task": task, "since": d.instant(since), "until": d.instant(until)}
    row = d.fetch_one(conn, "execution_count_overlaps", values)
    return 0 if row is None else int(row["overlaps"])


def execution_list(
    d: Dialect, conn: Any, job_id: int | None, task: str | None, limit: int
) -> list[Execution]:
    values = {"job_id": job_id, "task": task, "limit": limit}
    return [execution_from_row(row) for row in d.fetch(conn, "execution_list", values)]


def execution_durations(d: Dialect, conn: Any, task: str, limit: int) -> list[float]:
    rows = d.fetch(conn, "execution_list_durations", {"task": task, "limit": limit})
    return [max(0.0, float(row["seconds"])) for row in rows]


def ledger_counts(d: Dialect, conn: Any, since: datetime, until: datetime, schedule: str | None
) -> list[LedgerCount]:
    values = {"since": d.instant(since), "until": d.instant(until), "schedule": schedule}
    return [ledger_count_from_row(row) for row in d.fetch(conn, "ledger_count", values)]


def job_waiting(d: Dialect, conn: Any, now: datetime) -> list[WaitingGroup]:
    rows = d.fetch(conn, "job_count_waiting", {"now": d.instant(now)})
    return [waiting_from_row(row) for row in rows]


def event_record(d: Dialect, conn: Any, params: FleetEventInsert) -> None:
    values = {
        "name": params.name,
        "at": d.instant(params.at),
        "job_id": params.job_id,
        "task": params.task,
        "subject": params.subject,
        "detail": dump_json(params.detail, f"detail of event {params.name!r}"),
    }
    d.execute(conn, "event_insert", values)


def event_counts(d: Dialect, conn: Any, since: datetime) -> dict[str, int]:
    rows = d.fetch(conn, "event_count_by_name", {"since": d.instant(since)})
    return {row["name"]: int(row["count"]) for row in rows}


def event_list(d: Dialect, conn: Any, name: str | None, limit: int) -> list[FleetEvent]:
    rows = d.fetch(conn, "event_list", {"name": name, "limit": limit})
    return [event_from_row(row, json_text=d.json_text) for row in rows]


def anomaly_raise(d: Dialect, conn: Any, params: AnomalyRaise) -> AnomalyRaiseResult:
    values = {
        "kind": str(params.kind),
        "subject": params.subject,
        "severity": params.severity,
        "summary": params.summary,
        "schedule": params.schedule,
        "ratio": params.ratio,
        "evidence": dump_json(params.evidence, "anomaly evidence"),
        "advice": params.advice,
        "now": d.instant(params.now),
    }
    row = d.fetch_one(conn, "anomaly_raise", values)
    assert row is not None  # an upsert always returns its row
    anomaly = anomaly_from_row(row, json_text=d.json_text)
    return AnomalyRaiseResult(anomaly, created=anomaly.occurrences == 1)


def anomaly_list(d: Dialect, conn: Any, open_only: bool, limit: int) -> list[Anomaly]:
    rows = d.fetch(conn, "anomaly_list", {"open_only": open_only, "limit": limit})
    return [anomaly_from_row(row, json_text=d.json_text) for row in rows]


def anomaly_get(d: Dialect, conn: Any, anomaly_id: int) -> Anomaly | None:
    row = d.fetch_one(conn, "anomaly_get", {"id": anomaly_id})
    return None if row is None else anomaly_from_row(row, json_text=d.json_text)


def anomaly_resolve(d: Dialect, conn: Any, anomaly_id: int, now: datetime) -> bool:
    return d.execute(conn, "anomaly_resolve", {"id": anomaly_id, "now": d.instant(now)}) > 0


def observation_prune(d: Dialect, conn: Any, before: datetime, limit: int) -> int:
    values = {"before": d.instant(before), "limit": limit}
    queries = ("execution_prune", "event_prune", "anomaly_prune")
    return sum(d.execute(conn, query, values) for query in queries)
