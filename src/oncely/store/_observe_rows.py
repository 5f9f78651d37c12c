"""Rows of the observability tables as dataclasses, for both drivers (see :mod:`oncely.store.rows`
for the conventions: instants as epoch seconds or datetimes, JSON as text or decoded)."""

from __future__ import annotations

from oncely.store.observability import (
    Anomaly,
    AnomalyKind,
    Execution,
    ExecutionCount,
    FleetEvent,
    LedgerCount,
    WaitingGroup,
)
from oncely.store.rows import RowLike, as_datetime, as_required_datetime, load_json


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def execution_from_row(row: RowLike) -> Execution:
    return Execution(
        id=int(row["id"]),
        job_id=int(row["job_id"]),
        task=row["task"],
        queue=row["queue"],
        schedule=row["schedule"],
        slot=as_datetime(row["slot"]),
        attempt=int(row["attempt"]),
        fence=int(row["fence"]),
        worker_id=row["worker_id"],
        run_at=as_required_datetime(row["run_at"]),
        started_at=as_required_datetime(row["started_at"]),
        ended_at=as_datetime(row["ended_at"]),
        outcome=row["outcome"],
        error_kind=row["error_kind"],
    )


def execution_count_from_row(row: RowLike) -> ExecutionCount:
    return ExecutionCount(
        task=row["task"],
        queue=row["queue"],
        schedule=row["schedule"],
        bucket=_int_or_none(row["bucket"]),
        executions=int(row["executions"]),
        retries=int(row["retries"] or 0),
        jobs=int(row["jobs"]),
        workers=int(row["workers"]),
        failures=int(row["failures"] or 0),
        wait_seconds=float(row["wait_seconds"] or 0.0),
        lost=int(row["lost"] or 0),
    )


def ledger_count_from_row(row: RowLike) -> LedgerCount:
    return LedgerCount(
        schedule=row["schedule"],
        outcome=row["outcome"],
        count=int(row["count"]),
        first_slot=as_required_datetime(row["first_slot"]),
        last_slot=as_required_datetime(row["last_slot"]),
    )


def waiting_from_row(row: RowLike) -> WaitingGroup:
    return WaitingGroup(
        queue=row["queue"],
        task=row["task"],
        count=int(row["count"]),
        oldest_run_at=as_required_datetime(row["oldest_run_at"]),
    )


def event_from_row(row: RowLike, *, json_text: bool) -> FleetEvent:
    return FleetEvent(
        id=int(row["id"]),
        name=row["name"],
        at=as_required_datetime(row["at"]),
        job_id=_int_or_none(row["job_id"]),
        task=row["task"],
        subject=row["subject"],
        detail=load_json(row["detail"], json_text=json_text) or {},
    )


def anomaly_from_row(row: RowLike, *, json_text: bool) -> Anomaly:
    return Anomaly(
        id=int(row["id"]),
        kind=AnomalyKind(row["kind"]),
        subject=row["subject"],
        severity=row["severity"],
        summary=row["summary"],
        schedule=row["schedule"],
        ratio=None if row["ratio"] is None else float(row["ratio"]),
        evidence=load_json(row["evidence"], json_text=json_text) or {},
        advice=row["advice"],
        first_seen_at=as_required_datetime(row["first_seen_at"]),
        last_seen_at=as_required_datetime(row["last_seen_at"]),
        resolved_at=as_datetime(row["resolved_at"]),
        occurrences=int(row["occurrences"]),
    )
