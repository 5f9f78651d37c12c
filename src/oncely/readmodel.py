"""One read model for the command line and the dashboard: every view of jobs, queues, schedules,
slots, leases and workers is computed here once, as plain dicts ready for a table or JSON."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from oncely.errors import InvalidSchedule, NotFound
from oncely.schedules import ScheduleSpec, next_slot
from oncely.store.base import Job, JobFilter, JobState, Store


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "queue": job.queue,
        "task": job.task,
        "state": job.state.value,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "run_at": _iso(job.run_at),
        "created_at": _iso(job.created_at),
        "finished_at": _iso(job.finished_at),
        "schedule": job.schedule,
        "slot": _iso(job.slot),
        "last_error": job.errors[-1].message if job.errors else None,
    }


def job_detail(store: Store, job_id: int) -> dict[str, Any]:
    job = store.job_get(job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    detail = job_summary(job)
    detail.update(
        args=job.args,
        unique_key=job.unique_key,
        singleton_key=job.singleton_key,
        overlap=job.overlap.value,
        timeout=job.timeout,
        lease_owner=job.lease_owner,
        lease_expires_at=_iso(job.lease_expires_at),
        fence=job.fence,
        cancel_requested=job.cancel_requested,
        started_at=_iso(job.started_at),
        result=job.result,
        checkpoint=job.checkpoint,
        errors=[
            {"attempt": e.attempt, "at": _iso(e.at), "kind": e.kind.value, "message": e.message,
             "traceback": e.traceback}
            for e in job.errors
        ],
    )
    return detail


def list_jobs(store: Store, flt: JobFilter) -> list[dict[str, Any]]:
    return [job_summary(job) for job in store.job_list(flt)]


def queue_overview(store: Store) -> list[dict[str, Any]]:
    """Per queue: how many jobs are in each state."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: {state.value: 0 for state in JobState})
    for row in store.job_counts():
        table[row.queue][row.state.value] += row.count
    return [{"queue": queue, **counts} for queue, counts in sorted(table.items())]


def schedules_overview(store: Store, now: datetime) -> list[dict[str, Any]]:
    rows = []
    for row in store.schedule_list():
        ledger = store.ledger_list(row.name, limit=1)
        last = ledger[0] if ledger else None
        try:
            spec = ScheduleSpec.from_spec_dict(row.spec)
            upcoming = next_slot(spec, max(now, row.cursor) if row.cursor else now)
            trigger = spec.cron or f"every {spec.every:g}s"
            enabled = spec.enabled
        except InvalidSchedule as exc:
            upcoming, trigger, enabled = None, f"invalid: {exc}", False
        rows.append({
            "name": row.name,
            "task": row.task,
            "trigger": trigger,
            "enabled": enabled,
            "last_slot": _iso(last.slot) if last else None,
            "last_outcome": last.outcome.value if last else None,
            "next_slot": _iso(upcoming),
            "declared_at": _iso(row.declared_at),
        })
    return rows


def ledger(store: Store, schedule: str, limit: int = 50) -> list[dict[str, Any]]:
    if store.schedule_get(schedule) is None:
        raise NotFound(f"schedule {schedule!r} does not exist")
    return [
        {"slot": _iso(r.slot), "outcome": r.outcome.value, "job_id": r.job_id,
         "recorded_at": _iso(r.recorded_at), "updated_at": _iso(r.updated_at), "note": r.note}
        for r in store.ledger_list(schedule, limit=limit)
    ]


def leases(store: Store) -> list[dict[str, Any]]:
    return [
        {"key": r.key, "fence": r.fence, "owner": r.owner, "job_id": r.job_id,
         "acquired_at": _iso(r.acquired_at), "expires_at": _iso(r.expires_at)}
        for r in store.lease_list()
    ]


def workers(store: Store) -> list[dict[str, Any]]:
    return [
        {"worker_id": r.worker_id, "hostname": r.hostname, "pid": r.pid,
         "queues": ",".join(r.queues) if r.queues else "*", "concurrency": r.concurrency,
         "started_at": _iso(r.started_at), "last_seen_at": _iso(r.last_seen_at)}
        for r in store.worker_list()
    ]
