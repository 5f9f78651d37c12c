"""``oncely doctor``: check the store and the fleet, and say what is wrong and what to do.

Each :class:`DoctorFinding` has a severity (``problem`` and ``warning`` make the report unhealthy,
exit code 1; ``info`` and ``ok`` do not), one line of summary, the evidence behind it and advice.
Checks, in order: the schema; live and stale workers; the leader; expired leases nobody rescued;
every watchdog check (too many or too few executions, stuck runs, pressure) computed now; anomalies
the watchdog left open; lease takeovers and fence rejections in the last hour; dead letters;
schedules live workers declare differently; stored schedules whose definition is invalid, or whose
slots the app's task refuses (args its handler does not take or needs): no worker fires them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from oncely import readmodel
from oncely.errors import InvalidSchedule, SchemaMismatch
from oncely.observe.diagnose import Finding, WatchdogConfig, evaluate
from oncely.observe.fmt import plural, span
from oncely.runtime import Runtime
from oncely.schedules import ScheduleSpec
from oncely.store.base import Store, WorkerRow

UNHEALTHY = ("problem", "warning")
_ORDER = {"problem": 0, "warning": 1, "info": 2, "ok": 3}


@dataclass(frozen=True)
class DoctorFinding:
    severity: str
    check: str
    summary: str
    evidence: list[str] = field(default_factory=list)
    advice: str = ""


@dataclass(frozen=True)
class DoctorReport:
    findings: list[DoctorFinding]
    checked_at: datetime

    @property
    def healthy(self) -> bool:
        return not any(f.severity in UNHEALTHY for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def to_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "checked_at": self.checked_at.isoformat(),
                "findings": [asdict(f) for f in self.findings]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)



def examine(runtime: Runtime, config: WatchdogConfig | None = None) -> DoctorReport:
    now = runtime.clock.now()
    try:
        store = runtime.store  # opening it may migrate an older schema, or refuse a newer one
        store.check_schema()
    except SchemaMismatch as exc:
        return DoctorReport([DoctorFinding("problem", "schema", str(exc),
                                           advice="run `oncely migrate` (or upgrade oncely)")],
                            now)
    stale_after = runtime.settings.lease_ttl * 3
    findings = _fleet_checks(store, now, stale_after, runtime.settings.lease_ttl
                             + runtime.settings.maintenance_interval * 2)
    alive = [w for w in store.worker_list()
             if (now - w.last_seen_at).total_seconds() <= stale_after]
    findings += _clock_checks(alive, runtime.settings.lease_ttl)
    findings += _task_checks(store, now, alive)
    fresh = evaluate(store, now, config or runtime.watchdog, stale_after)
    findings += [_from_watchdog(f) for f in fresh]
    findings += _open_anomalies(store, {f.key for f in fresh})
    findings += _signals(store, now)
    findings += _schedule_disagreements(store, now, stale_after)
    findings += _invalid_schedules(runtime, now)
    if not any(f.severity in UNHEALTHY for f in findings):
        findings.append(DoctorFinding("ok", "fleet", "no problem found"))
    findings.sort(key=lambda f: _ORDER.get(f.severity, 9))
    return DoctorReport(findings, now)


def _schedule_disagreements(store: Store, now: datetime,
                            stale_after: float) -> list[DoctorFinding]:
    found = []
    for name, workers in sorted(readmodel.disagreeing_workers(store, now, stale_after).items()):
        row = store.schedule_get(name)
        found.append(DoctorFinding(
            "warning", f"schedule:{name}",
            f"schedule {name}: {plural(len(workers), 'live worker')} declare another definition "
            f"than revision {row.revision if row else '?'} in force",
            [f"{w['worker_id']} on {w['hostname']} declares "
             + (f"revision {w['declared_revision']}" if w["declared_revision"]
                else f"a definition never in force ({w['spec_hash']})") for w in workers[:10]],
            "finish the deploy (the definition in force is what fires); to go back, "
            f"`oncely --app module:app schedules apply {name}` with the code you want"))
    return found


def _invalid_schedules(runtime: Runtime, now: datetime) -> list[DoctorFinding]:
    """Stored schedules no worker fires: a definition that does not parse, or one whose slots
    this app's task refuses (args its handler does not take or needs; its key's arguments)."""
    found = []
    for row in runtime.store.schedule_list():
        fix = (f"`oncely schedules update {row.name} …` with valid values"
               if row.origin == "dynamic" else
               f"`oncely --app module:app schedules apply {row.name}` (the code's definition)")
        try:
            spec = ScheduleSpec.from_spec_dict(row.spec)
        except InvalidSchedule as exc:
            found.append(DoctorFinding(
                "problem", f"schedule:{row.name}",
                f"schedule {row.name}: its stored definition (revision {row.revision}) is "
                "invalid, so no worker fires it", [str(exc)],
                fix + f", or `oncely schedules delete {row.name}`"))
            continue
        task = runtime.tasks.get(spec.task)
        if task is None:
            continue  # judged by the workers that have the task
        refused = readmodel.slots_refused(task, spec, now)
        if refused is not None:
            found.append(DoctorFinding(
                "problem", f"schedule:{row.name}",
                f"schedule {row.name}: task {spec.task} refuses its slots (revision "
                f"{row.revision}), so workers with this code do not fire it", [refused],
                fix + f", or `oncely schedules delete {row.name}`"))
    return found


def _clock_checks(alive: list[WorkerRow], lease_ttl: float) -> list[DoctorFinding]:
    """Live workers whose clock is off the store server's by more than a tenth of the TTL."""
    limit = lease_ttl / 10
    skewed = [w for w in alive if abs(w.clock_offset or 0.0) > limit]
    if not skewed:
        return []
    return [DoctorFinding(
        "warning", "clock", f"{plural(len(skewed), 'worker')} with a clock off the store "
        f"server's by more than {limit:g} s (a tenth of the lease TTL)",
        [f"{w.worker_id} on {w.hostname}: its clock is {-(w.clock_offset or 0.0):+.3f} s off"
         for w in skewed],
        "leases are judged on the server's clock, so nothing is taken over; fix the machine's "
        "time (NTP) all the same")]


def _task_checks(store: Store, now: datetime, alive: list[WorkerRow]) -> list[DoctorFinding]:
    """Due jobs that no live worker can take: none has their task (in their queue)."""
    found = []
    for group in store.job_waiting(now):
        if not alive or any(readmodel.can_take(w, group.queue, group.task) for w in alive):
            continue  # no worker at all is reported by the fleet checks
        having = [w.worker_id for w in alive if w.tasks is None or group.task in w.tasks]
        found.append(DoctorFinding(
            "problem", "tasks", f"{plural(group.count, 'job')} of task {group.task!r} in queue "
            f"{group.queue!r} wait: no live worker has that task for that queue",
            [f"oldest due since {group.oldest_run_at.isoformat()}",
             "live workers with the task (other queues): " + (", ".join(having) or "none")],
            f"start a worker whose app registers {group.task!r} and that serves queue "
            f"{group.queue!r}"))
    return found



def _fleet_checks(
    store: Store, now: datetime, stale_after: float, rescue_grace: float
) -> list[DoctorFinding]:
    found: list[DoctorFinding] = []
    workers = store.worker_list()
    alive = [w for w in workers if (now - w.last_seen_at).total_seconds() <= stale_after]
    stale = [w for w in workers if w not in alive]
    waiting = sum(g.count for g in store.job_waiting(now))
    if not alive and (waiting or store.schedule_list()):
        found.append(DoctorFinding(
            "problem", "workers", "no live worker",
            [f"{plural(waiting, 'job')} due and waiting",
             f"{plural(len(store.schedule_list()), 'schedule')} registered"],
            "start workers: oncely --app module:app worker"))
    if stale:
        found.append(DoctorFinding(
            "info", "workers", f"{plural(len(stale), 'worker')} not seen for over "
            f"{span(stale_after)} (stopped without deregistering, or frozen)",
            [f"{w.worker_id} on {w.hostname} last seen "
             f"{span((now - w.last_seen_at).total_seconds())} ago" for w in stale[:10]],
            "their expired leases are rescued by the leader; nothing to do if they were killed"))
    summary = readmodel.fleet(store, now, stale_after)
    if alive and summary["leader"] is None:
        found.append(DoctorFinding(
            "warning", "leader", "no leader: the rescuer, pruner and watchdog are not running",
            [f"{plural(len(alive), 'live worker')}; leader term {summary['leader_term']}"],
            "a worker elects itself within leader_ttl; if this persists, check worker logs "
            "for store errors"))
    expired = store.job_expired(now - timedelta(seconds=rescue_grace), 100)
    if expired:
        found.append(DoctorFinding(
            "problem", "rescue", f"{plural(len(expired), 'running job')} lost their worker over "
            f"{span(rescue_grace)} ago and nobody rescued them",
            [f"job {j.id} ({j.task}) lease of {j.lease_owner} expired at "
             f"{j.lease_expires_at.isoformat() if j.lease_expires_at else '?'}"
             for j in expired[:10]],
            "the leader's rescuer should retry them: is any worker running maintenance?"))
    return found


def _from_watchdog(finding: Finding) -> DoctorFinding:
    evidence = [f"{key}: {value}" for key, value in finding.evidence.items()
                if value not in (None, 0, "")]
    return DoctorFinding("problem", finding.subject, finding.summary, evidence, finding.advice)


def _open_anomalies(store: Store, fresh: set[tuple[str, str]]) -> list[DoctorFinding]:
    stale = [a for a in store.anomaly_list(open_only=True, limit=100)
             if (str(a.kind), a.subject) not in fresh]
    if not stale:
        return []
    return [DoctorFinding(
        "info", "anomalies", f"{plural(len(stale), 'anomaly', 'anomalies')} still open that the "
        "checks no longer see",
        [f"#{a.id} {a.kind} {a.summary} (last seen {a.last_seen_at.isoformat()})"
         for a in stale[:10]],
        "the watchdog resolves them on its next run (leader only)")]


def _signals(store: Store, now: datetime) -> list[DoctorFinding]:
    summary = readmodel.fleet(store, now)
    found = []
    if summary["lease_takeovers_1h"]:
        found.append(DoctorFinding(
            "warning", "leases", f"{plural(summary['lease_takeovers_1h'], 'lease takeover')} "
            "in the last hour: a worker stalled or died while holding a job",
            [f"{e['at']} {e['subject']}: {e['detail'].get('previous_owner')} -> "
             f"{e['detail'].get('owner')}" for e in readmodel.fleet_events(store, 50)
             if e["name"] == "lease.taken_over"][:10],
            "CPU-bound handlers cannot starve the lease keeper, but a paused process can: "
            "raise lease_ttl if pauses are expected, and write through ctx.fenced()"))
    if summary["fence_rejections_1h"]:
        found.append(DoctorFinding(
            "warning", "fences", f"{plural(summary['fence_rejections_1h'], 'write')} refused by "
            "fencing in the last hour (a worker kept running after losing its lease)",
            [], "fencing worked; find why the worker lost its lease (takeovers, store outages)"))
    if summary["dead_letters"]:
        found.append(DoctorFinding(
            "info", "dead letters", f"{plural(summary['dead_letters'], 'failed job')} kept",
            [], "inspect with `oncely jobs list --state failed`; retry with `oncely jobs retry`"))
    return found


def render_text(report: DoctorReport) -> str:
    lines = []
    for finding in report.findings:
        lines.append(f"{finding.severity.upper():8} {finding.summary}")
        lines += [f"         - {item}" for item in finding.evidence]
        if finding.advice:
            lines.append(f"         do: {finding.advice}")
    verdict = "healthy" if report.healthy else "problems found"
    lines.append(f"oncely doctor: {verdict} ({report.checked_at.isoformat()})")
    return "\n".join(lines)
