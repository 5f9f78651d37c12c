"""One read model for the command line and the dashboard: every view of jobs, queues, schedules,
slots, leases, workers, executions and anomalies is computed here once, as plain dicts ready for a
table, a page or JSON (the dashboard's fleet metrics read it too)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from oncely.errors import ConfigError, InvalidSchedule, NotFound
from oncely.observe import diagnose
from oncely.observe.notify import anomaly_to_dict
from oncely.redaction import REDACTED as REDACTED
from oncely.redaction import mask_url as mask_url
from oncely.redaction import redact as redact
from oncely.schedules import ScheduleSpec, expected_count, next_slot, period_hint
from oncely.store.base import LEADER_LEASE_KEY, JobFilter, Store, WorkerRow
from oncely.store.controls import ClaimRoom, ControlKind, LimitWait, scope_of
from oncely.store.observability import FENCE_REJECTED, LEASE_TAKEN_OVER, ExecutionWindow
from oncely.types import WAITING_STATES, Job, JobState

if TYPE_CHECKING:
    from oncely.tasks import Task


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


def job_wait(store: Store, job: Job, now: datetime) -> LimitWait | None:
    """The queue control that keeps a due waiting job from starting, if any."""
    if job.state not in WAITING_STATES or job.run_at > now:
        return None
    active = [c for c in store.control_list() if c.active]
    keys = [job.concurrency_key] if job.concurrency_key else []
    gate = ClaimRoom(active, store.control_usage(keys), now)
    return gate.wait_for(job.queue, job.task, job.concurrency_key)


def can_take(worker: WorkerRow, queue: str, task: str) -> bool:
    """Whether ``worker`` claims jobs of ``task`` in ``queue`` (None: any)."""
    return ((worker.queues is None or queue in worker.queues)
            and (worker.tasks is None or task in worker.tasks))


def no_worker_reason(store: Store, job: Job, now: datetime, stale_after: float) -> str | None:
    """Why a due waiting job has no taker: no live worker has its task (for its queue)."""
    if job.state not in WAITING_STATES or job.run_at > now:
        return None
    alive = [w for w in store.worker_list()
             if (now - w.last_seen_at).total_seconds() <= stale_after]
    if not alive or any(can_take(w, job.queue, job.task) for w in alive):
        return None
    return f"no live worker has task {job.task!r} for queue {job.queue!r}"


def job_detail(
    store: Store, job_id: int, now: datetime | None = None, stale_after: float = 90.0
) -> dict[str, Any]:
    job = store.job_get(job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    detail = job_summary(job)
    now = now or datetime.now(UTC)
    wait = job_wait(store, job, now)
    reason = wait.describe() if wait is not None else no_worker_reason(store, job, now,
                                                                        stale_after)
    detail.update(
        waiting_reason=reason,
        limited_until=None if wait is None else _iso(wait.until),
        args=job.args,
        unique_key=job.unique_key,
        singleton_key=job.singleton_key,
        concurrency_key=job.concurrency_key,
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


def disagreeing_workers(
    store: Store, now: datetime, stale_after: float = 90.0
) -> dict[str, list[dict[str, Any]]]:
    """Per schedule: the live workers whose code declares another definition than the one in
    force (with the revision their definition had, if the schedule ever held it)."""
    rows = {row.name: row for row in store.schedule_list()}
    found: dict[str, list[dict[str, Any]]] = {}
    for worker in store.worker_list():
        if not worker.declared or (now - worker.last_seen_at).total_seconds() > stale_after:
            continue
        for name, digest in worker.declared.items():
            row = rows.get(name)
            if row is not None and digest != row.spec_hash:
                found.setdefault(name, []).append(
                    {"worker_id": worker.worker_id, "hostname": worker.hostname,
                     "declared_revision": row.revision_of(digest), "spec_hash": digest[:12]})
    return found


def slots_refused(task: Task, spec: ScheduleSpec, now: datetime) -> str | None:
    """Why ``task`` refuses the slots of ``spec`` (args its handler does not take or needs, its
    key's arguments, queue or priority), or None: workers with this task skip such a schedule."""
    try:
        task.slot_insert(spec, now)
    except ConfigError as exc:
        return str(exc)
    return None


def schedules_overview(
    store: Store, now: datetime, stale_after: float = 90.0,
    tasks: Mapping[str, Task] | None = None,
) -> list[dict[str, Any]]:
    """Every stored schedule with its state, revision, last and next slot. A stored definition
    that does not parse is listed with state ``invalid`` and the reason (``invalid``), never an
    error: no worker fires it until it is updated, applied again or deleted. So is one whose
    slots its task refuses, when the caller knows the app's ``tasks`` (workers with this code
    skip it)."""
    rows = []
    disagreeing = disagreeing_workers(store, now, stale_after)
    for row in store.schedule_list():
        ledger = store.ledger_list(row.name, limit=1)
        last = ledger[0] if ledger else None
        invalid = None
        try:
            spec = ScheduleSpec.from_spec_dict(row.spec)
            upcoming = next_slot(spec, max(now, row.cursor) if row.cursor else now)
            trigger = spec.cron or f"every {spec.every:g}s"
            enabled = spec.enabled
        except InvalidSchedule as exc:  # a stored row no worker can fire: shown, not fatal
            upcoming, trigger, enabled, invalid = None, f"invalid: {exc}", False, str(exc)
        else:
            task = (tasks or {}).get(spec.task)
            refused = None if task is None else slots_refused(task, spec, now)
            if refused is not None:
                invalid = f"task {spec.task} refuses its slots: {refused}"
                upcoming = None
        others = disagreeing.get(row.name, [])
        rows.append({
            "name": row.name,
            "task": row.task,
            "trigger": trigger,
            "enabled": enabled,
            "invalid": invalid,
            "state": ("invalid" if invalid else "paused" if row.paused else
                      "active" if enabled else "disabled"),
            "paused_at": _iso(row.paused_at),
            "paused_reason": row.paused_reason,
            "origin": row.origin,
            "revision": row.revision,
            "last_slot": _iso(last.slot) if last else None,
            "last_outcome": last.outcome.value if last else None,
            "next_slot": _iso(upcoming),
            "declared_at": _iso(row.declared_at),
            "disagreeing_workers": others,
            "disagree": ", ".join(w["worker_id"] for w in others) or None,
        })
    return rows


def schedule_history(store: Store, name: str, limit: int = 50) -> list[dict[str, Any]]:
    """What deploys and operators did to a schedule, newest first."""
    return [{"at": _iso(e.at), "event": e.name, "by": e.detail.get("by"),
             "detail": {k: v for k, v in e.detail.items() if k != "by"}, "job_id": e.job_id}
            for e in store.schedule_history(name, limit)]


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
         "started_at": _iso(r.started_at), "last_seen_at": _iso(r.last_seen_at),
         # seconds to add to the worker's clock to read the store server's (leases use that)
         "clock_offset": None if r.clock_offset is None else round(r.clock_offset, 3),
         "tasks": ",".join(r.tasks) if r.tasks is not None else "*"}
        for r in store.worker_list()
    ]


# observability: fleet, queues, schedules against their expected runs, anomalies -------------

RATE_WINDOW = 900.0  # seconds of executions behind the per-queue rate
_TICK = timedelta(microseconds=1)


def redact_job(detail: dict[str, Any]) -> dict[str, Any]:
    """A job view with the secret-looking values of its args, result and checkpoint hidden."""
    return detail | {key: redact(detail[key]) for key in ("args", "result", "checkpoint")
                     if key in detail}


def queue_health(store: Store, now: datetime) -> list[dict[str, Any]]:
    """Per queue: jobs per state, due jobs waiting and the oldest wait, running, failed (dead
    letters), attempts started per minute over the last 15 minutes, and its controls: paused,
    max_running, limit, and what holds its due jobs back now (``held``: paused, max_running or
    rate, with ``held_until`` for a rate window)."""
    rows = {row["queue"]: row for row in queue_overview(store)}
    due: dict[str, tuple[int, datetime]] = {}
    for group in store.job_waiting(now):
        count, oldest = due.get(group.queue, (0, group.oldest_run_at))
        due[group.queue] = (count + group.count, min(oldest, group.oldest_run_at))
    started: dict[str, int] = defaultdict(int)
    window = ExecutionWindow(now - timedelta(seconds=RATE_WINDOW), now)
    for started_count in store.execution_counts(window):
        started[started_count.queue] += started_count.executions
    controls = store.control_list()
    queues = {c.name: c for c in controls if c.kind == ControlKind.QUEUE}
    gate = ClaimRoom([c for c in controls if c.active], store.control_usage(), now)
    result = []
    for queue in sorted(set(rows) | set(due) | set(started) | set(queues)):
        row = dict(rows.get(queue) or {"queue": queue, **{s.value: 0 for s in JobState}})
        waiting, oldest = due.get(queue, (0, now))
        control = queues.get(queue)
        held = gate.waits.get(scope_of(ControlKind.QUEUE, queue))
        row.update(
            due=waiting,
            oldest_waiting_seconds=(now - oldest).total_seconds(),
            rate_per_minute=round(started[queue] / (RATE_WINDOW / 60), 3),
            paused=bool(control and control.paused),
            max_running=control.max_running if control else None,
            limit=control.rate_text() if control else None,
            held=None if held is None else held.reason.value,
            held_until=None if held is None else _iso(held.until),
            held_jobs=waiting if held is not None else 0,
        )
        result.append(row)
    return result


def fleet(store: Store, now: datetime, stale_after: float = 90.0) -> dict[str, Any]:
    """The fleet at a glance: queues, workers, the leader, and the last hour's warning signs."""
    workers_seen = store.worker_list()
    alive = [w for w in workers_seen if (now - w.last_seen_at).total_seconds() <= stale_after]
    leader = next((lease for lease in store.lease_list() if lease.key == LEADER_LEASE_KEY), None)
    leading = leader is not None and leader.expires_at is not None and leader.expires_at > now
    events = store.event_counts(now - timedelta(hours=1))
    queues = queue_health(store, now)
    return {
        "now": _iso(now),
        "queues": queues,
        "workers_alive": len(alive),
        "workers_stale": len(workers_seen) - len(alive),
        "leader": leader.owner if leading and leader is not None else None,
        "leader_term": leader.fence if leader is not None else 0,
        "lease_takeovers_1h": events.get(LEASE_TAKEN_OVER, 0),
        "fence_rejections_1h": events.get(FENCE_REJECTED, 0),
        "running": sum(int(q["running"]) for q in queues),
        "dead_letters": sum(int(q["failed"]) for q in queues),
        "anomalies_open": len(store.anomaly_list(open_only=True, limit=1000)),
    }


def schedule_rates(store: Store, now: datetime, window: float = 3600.0) -> list[dict[str, Any]]:
    """Each schedule's executions in the window against the number its definition expects."""
    return [{"schedule": spec.name, "task": spec.task,
             **diagnose.rate(store, row, spec, now, window).to_dict()}
            for row, spec in diagnose.declared_specs(store)]


def schedule_timeline(
    store: Store, name: str, now: datetime, buckets: int = 24
) -> dict[str, Any]:
    """Expected and actual executions per bucket (one period, between 5 min and a day, aligned
    to the epoch; each ``[start, start + size)``), the actual ones split into first runs of
    slots, retries and runs not tied to a slot."""
    row = store.schedule_get(name)
    if row is None:
        raise NotFound(f"schedule {name!r} does not exist")
    try:
        spec = ScheduleSpec.from_spec_dict(row.spec)
    except InvalidSchedule as exc:  # nothing is expected of a definition that cannot fire
        return {"schedule": name, "task": row.task, "invalid": str(exc), "bucket_seconds": None,
                "buckets": []}
    size = min(max(period_hint(spec), 300.0), 86400.0)
    end = (int(now.timestamp() // size) + 1) * size
    since = datetime.fromtimestamp(end - buckets * size, UTC)
    counts = [{"slot": 0, "retry": 0, "non_slot": 0} for _ in range(buckets)]
    window = ExecutionWindow(since - _TICK, now, spec.task, size)
    for count in store.execution_counts(window):
        if count.bucket is None or count.schedule not in (None, spec.name):
            continue
        cell = counts[min(max(count.bucket, 0), buckets - 1)]
        cell["retry"] += count.retries
        cell["slot" if count.schedule else "non_slot"] += count.executions - count.retries
    table = []
    for index, cell in enumerate(counts):
        # cells are [start, stop): slots in (start - tick, stop - tick]
        start = since + timedelta(seconds=index * size)
        counted_from = max(start - _TICK, row.created_at)
        stop = min(start + timedelta(seconds=size) - _TICK, now)
        expected = expected_count(spec, counted_from, stop) if stop > counted_from else 0
        table.append({"start": _iso(start), "expected": expected,
                      "actual": sum(cell.values()), **cell})
    return {"schedule": name, "task": spec.task, "invalid": None,
            "bucket_seconds": size, "buckets": table}


def schedule_detail(
    store: Store, name: str, now: datetime, stale_after: float = 90.0,
    tasks: Mapping[str, Task] | None = None,
) -> dict[str, Any]:
    overview = next((s for s in schedules_overview(store, now, stale_after, tasks)
                     if s["name"] == name), None)
    row = store.schedule_get(name)
    if overview is None or row is None:
        raise NotFound(f"schedule {name!r} does not exist")
    return {
        **overview,
        "spec": redact(row.spec),
        "created_at": _iso(row.created_at),
        "rates": next((r for r in schedule_rates(store, now) if r["schedule"] == name), None),
        "ledger": ledger(store, name, limit=25),
        "history": schedule_history(store, name, 25),
        "anomalies": [a for a in anomalies(store, open_only=False, limit=200)
                      if a["schedule"] == name][:20],
    }


def anomalies(store: Store, open_only: bool = True, limit: int = 100) -> list[dict[str, Any]]:
    return [anomaly_to_dict(a) for a in store.anomaly_list(open_only=open_only, limit=limit)]


def job_attempts(store: Store, job_id: int) -> list[dict[str, Any]]:
    return [
        {"attempt": e.attempt, "worker_id": e.worker_id, "fence": e.fence,
         "started_at": _iso(e.started_at), "ended_at": _iso(e.ended_at), "outcome": e.outcome,
         "error_kind": e.error_kind,
         "seconds": (e.ended_at - e.started_at).total_seconds() if e.ended_at else None}
        for e in store.execution_list(job_id=job_id, limit=100)
    ]


def fleet_events(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    return [{"name": e.name, "at": _iso(e.at), "job_id": e.job_id, "task": e.task,
             "subject": e.subject, "detail": e.detail} for e in store.event_list(limit=limit)]
