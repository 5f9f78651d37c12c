"""The figures of one phase, read from its store after the fleet stopped, plus the invariants the
guarded run must hold.

Executions come from ``oncely_executions`` (one row per attempt a worker started, written by the
database). **Runs** of a schedule are those attempts, less the ones the demo itself cut short (the
attempt of a worker it SIGKILLed or froze, which the rescuer then handed over: the process was
dead, or frozen and fenced off) and the ones a graceful shutdown released (their attempt is
refunded, and no rescue recorded). Attempts handed over from a *live* worker — the unsafe run's
leases expire under running jobs, without heartbeat or self-fencing — stay counted: those
handlers kept running.
The **expected** runs are the schedule's slots from the one current when the fleet started
through the last one before the end of the day.

Organization writes are counted from the write log that :mod:`.dataset` installs (one
row per organization row the free-tier job wrote), per simulated hour. The **write explosion**
splits them into two multipliers: runs per slot (the engine's: runs / slots) and organization
rows written per run (the job's: writes / runs), whose product is the writes per slot — per
hour, for an hourly job. Rows written in one statement batch share their instant in the write
log, so the log also tells how many rows each batch wrote: each run of the incident's job
writes all its chunks at one instant, every organization.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import oncely
from oncely_billing import THRESHOLDS_SCHEDULE, db
from oncely_billing.demo.phase import PhaseRun
from oncely_billing.demo.plan import Plan
from oncely_billing.meter import SCHEDULE_NAME as STRIPE_SCHEDULE

SCHEDULES = (THRESHOLDS_SCHEDULE, STRIPE_SCHEDULE)
# Events the store records for the whole fleet (docs/events.md), read through app.read.
FENCE_REJECTED, LEASE_TAKEN_OVER = "fence.rejected", "lease.taken_over"
# attempts another worker took over: its worker was proven gone, or its lease expired
RESCUED = ("worker_gone", "lease_expired")
HOUR = timedelta(hours=1)
WRITES_PER_BATCH = "SELECT COUNT(*) FROM sim_org_writes WHERE at >= {since} GROUP BY at"
WRITES_PER_HOUR = {
    "sqlite": "SELECT CAST(at / 3600 AS INTEGER), COUNT(*), COUNT(DISTINCT org_id) "
              "FROM sim_org_writes WHERE at >= {since} GROUP BY 1 ORDER BY 1",
    "postgresql": "SELECT CAST(FLOOR(at / 3600) AS BIGINT), COUNT(*), COUNT(DISTINCT org_id) "
                  "FROM sim_org_writes WHERE at >= {since} GROUP BY 1 ORDER BY 1",
}
GROUPED = {
    "outbox": "SELECT status, COUNT(*) FROM metering_notification_outbox GROUP BY status",
    "stripe_hours": "SELECT status, COUNT(*) FROM oncely_stripe_hours GROUP BY status",
    "stripe_runs": "SELECT outcome, COUNT(*) FROM oncely_stripe_runs GROUP BY outcome",
}


def hours_of(plan: Plan) -> list[datetime]:
    """The clock hours of the day, from the origin's hour to the end's."""
    first = plan.origin.replace(minute=0, second=0, microsecond=0)
    return [first + HOUR * n for n in range(int((plan.end - first) / HOUR) + 1)]


def measure(plan: Plan, run: PhaseRun) -> dict[str, Any]:
    app = oncely.App(run.url, clock=oncely.FrozenClock(plan.end))
    try:
        read = app.read
        events = read.fleet_event_counts(plan.origin - HOUR)
        anomalies = read.anomalies(open_only=False, limit=1000)
        failed = Counter(job.task for job in read.jobs(state=oncely.JobState.FAILED,
                                                       limit=100_000))
        schedules = {name: schedule_figures(app, plan, run, name) for name in SCHEDULES}
        writes = org_writes(app, plan)
        return {
            "schedules": schedules,
            "org_writes": writes,
            "write_explosion": write_explosion(plan, schedules[THRESHOLDS_SCHEDULE], writes),
            "emails": dict(run.mail, outbox=grouped(app, "outbox")),
            "stripe": dict(run.stripe, **stripe_hours(app, plan, run)),
            "fenced_writes_rejected": events.get(FENCE_REJECTED, 0),
            "lease_takeovers_recorded": events.get(LEASE_TAKEN_OVER, 0),
            "dead_letters": dict(failed),
            "watchdog": {
                "raised_during_run": [anomaly_row(a) for a in anomalies
                                      if a.first_seen_at < plan.end],
                "final_check": run.watchdog,
            },
            "doctor": run.doctor,
        }
    finally:
        app.close()


def anomaly_row(anomaly: Any) -> dict[str, Any]:
    return {"kind": str(anomaly.kind), "summary": anomaly.summary, "ratio": anomaly.ratio,
            "severity": anomaly.severity, "first_seen_at": anomaly.first_seen_at.isoformat(),
            "occurrences": anomaly.occurrences, "advice": anomaly.advice}


def schedule_figures(app: oncely.App, plan: Plan, run: PhaseRun, name: str) -> dict[str, Any]:
    read = app.read
    spec = read.schedule(name)
    if spec is None:
        raise oncely.OncelyError(f"schedule {name!r} was never registered in the {run.config.name}"
                                 " phase: did the workers start? (see the logs)")
    first = read.latest_slot(spec, plan.origin)
    assert first is not None
    slots = [first, *read.slots(spec, first, plan.end)]
    attempts = read.executions(task=spec.task, limit=1_000_000)
    cut = {e.id for e in attempts if e.worker_id in run.cut_workers
           and e.error_kind in RESCUED}
    # a rescue gives the attempt back too: only a release without one is a shutdown's
    released = {e.id for e in attempts if e.outcome == "released" and e.error_kind not in RESCUED}
    runs = [e for e in attempts if e.id not in cut and e.id not in released]
    per_slot = Counter(e.slot for e in runs if e.slot is not None)
    ledger = {r.slot: r.outcome for r in read.ledger(name, limit=100_000)}
    outcomes = Counter(str(ledger[slot]) for slot in slots if slot in ledger)
    span = (plan.origin - 2 * HOUR, plan.end + 2 * HOUR)
    return {
        "task": spec.task,
        "trigger": spec.cron,
        "expected": len(slots),
        "runs": len(runs),
        "ratio": round(len(runs) / len(slots), 3),
        "attempts_started": len(attempts),
        "handed_over": sum(1 for e in attempts if e.error_kind in RESCUED),
        "cut_by_demo": len(cut),
        "released_by_shutdown": len(released),
        "retries": sum(1 for e in runs if e.attempt > 1),
        "not_tied_to_a_slot": sum(1 for e in runs if e.slot is None),
        "max_runs_per_slot": max(per_slot.values(), default=0),
        "slots_run_more_than_once": sum(1 for count in per_slot.values() if count > 1),
        "overlapping_starts": read.execution_overlaps(spec.task, *span),
        "jobs": len(read.jobs(task=spec.task, limit=100_000)),
        "ledger": dict(outcomes),
        "slots_missing_from_ledger": sum(1 for slot in slots if slot not in ledger),
        "slots_not_ran": [slot.isoformat() for slot in slots
                          if ledger.get(slot) != oncely.SlotOutcome.RAN],
        "per_hour": per_hour(plan, slots, runs),
    }


def per_hour(plan: Plan, slots: list[datetime], runs: list[Any]) -> list[dict[str, Any]]:
    """Per clock hour: the slots it holds, and the runs of those slots (or, for a run tied to no
    slot, the runs that started in it)."""
    table: dict[datetime, dict[str, Any]] = {
        hour: {"hour": hour.isoformat(), "expected": 0, "runs": 0} for hour in hours_of(plan)}
    for slot in slots:
        cell = table.get(slot.replace(minute=0, second=0, microsecond=0))
        if cell is not None:
            cell["expected"] += 1
    for execution in runs:
        when = execution.slot or execution.started_at
        cell = table.get(when.replace(minute=0, second=0, microsecond=0))
        if cell is not None:
            cell["runs"] += 1
    return list(table.values())


def org_writes(app: oncely.App, plan: Plan) -> dict[str, Any]:
    sql = WRITES_PER_HOUR[app.dialect].format(since=float(plan.origin.timestamp()))
    with db.connection(app) as conn:
        rows = conn.execute(sql).fetchall()
    found = {int(hour): (int(writes), int(orgs)) for hour, writes, orgs in rows}
    table: list[dict[str, Any]] = []
    counts: list[int] = []
    rewrites = 0
    for hour in hours_of(plan):
        writes, orgs = found.get(int(hour.timestamp()) // 3600, (0, 0))
        table.append({"hour": hour.isoformat(), "writes": writes, "orgs": orgs,
                      "rewrites": writes - orgs})
        counts.append(writes)
        rewrites += writes - orgs
    with db.connection(app) as conn:
        batches = [int(row[0]) for row in conn.execute(
            WRITES_PER_BATCH.format(since=float(plan.origin.timestamp()))).fetchall()]
    return {
        "total": sum(counts),
        "per_hour_mean": round(sum(counts) / max(1, len(counts)), 1),
        "per_hour_max": max(counts, default=0),
        "rewrites": rewrites,
        "batches": len(batches),
        "batch_rows_min": min(batches, default=0),
        "batch_rows_max": max(batches, default=0),
        "per_hour": table,
    }


def write_explosion(plan: Plan, free_tier: dict[str, Any], writes: dict[str, Any]
                    ) -> dict[str, Any]:
    """The free-tier job's organization writes as runs per slot times rows written per run."""
    runs, slots = free_tier["runs"], free_tier["expected"]
    runs_per_slot = runs / max(1, slots)
    rows_per_run = writes["total"] / max(1, runs)
    return {
        "orgs": plan.orgs,
        "slots": slots,
        "runs": runs,
        "runs_per_slot": round(runs_per_slot, 2),
        "rows_per_run": round(rows_per_run, 1),
        "writes_per_slot": round(runs_per_slot * rows_per_run),
        "writes_per_hour_mean": writes["per_hour_mean"],
        "writes_per_hour_max": writes["per_hour_max"],
        "rows_per_batch_max": writes["batch_rows_max"],
    }


def stripe_hours(app: oncely.App, plan: Plan, run: PhaseRun) -> dict[str, Any]:
    """Hours that fell due in the day (one per slot of the Stripe schedule after its start) and
    how many of them Stripe accepted events for."""
    spec = app.read.schedule(STRIPE_SCHEDULE)
    due: list[datetime] = []
    if spec is not None:
        due = [slot.replace(minute=0, second=0, microsecond=0) - HOUR  # due 65 min after
               for slot in app.read.slots(spec, plan.origin, plan.end)]
    billed = set(run.stripe.get("hours", []))
    return {
        "hours_due": len(due),
        "hours_billed_in_day": sum(1 for hour in due if int(hour.timestamp() * 1000) in billed),
        "store_hours": grouped(app, "stripe_hours"),
        "store_runs": grouped(app, "stripe_runs"),
    }


def grouped(app: oncely.App, name: str) -> dict[str, int]:
    """A ``GROUP BY`` count from a metering table (empty if the table does not exist yet)."""
    with contextlib.suppress(Exception), db.connection(app) as conn:
        return {str(key): int(count) for key, count in conn.execute(GROUPED[name]).fetchall()}
    return {}


def invariants(guarded: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(invariant, held, evidence) for the guarded run."""
    checks: list[tuple[str, bool, str]] = []
    for name, figures in guarded["schedules"].items():
        checks.append((f"{name}: one run per slot (ratio 1.0)",
                       figures["runs"] == figures["expected"]
                       and figures["max_runs_per_slot"] <= 1
                       and figures["not_tied_to_a_slot"] == 0,
                       f"{figures['runs']} runs for {figures['expected']} slots, at most "
                       f"{figures['max_runs_per_slot']} per slot, "
                       f"{figures['not_tied_to_a_slot']} not tied to a slot"))
        checks.append((f"{name}: no overlapping runs", figures["overlapping_starts"] == 0,
                       f"{figures['overlapping_starts']} overlapping starts"))
        not_ran = figures["slots_not_ran"]
        checks.append((f"{name}: every due slot ran, in the ledger", not not_ran,
                       f"{len(not_ran)} slot(s) not 'ran'"
                       + (f", first {not_ran[0]}" if not_ran else "")))
    emails = guarded["emails"]["duplicates"]
    checks.append(("no duplicate email", emails == 0, f"{emails} duplicate(s)"))
    stripe = guarded["stripe"]["duplicate_identifiers_accepted"]
    checks.append(("no Stripe identifier accepted twice", stripe == 0, f"{stripe} accepted twice"))
    raised = guarded["watchdog"]["raised_during_run"]
    final = guarded["watchdog"]["final_check"]
    checks.append(("watchdog quiet", not raised and not final,
                   f"{len(raised)} anomalies raised during the day, {len(final)} at the end"
                   + (f": {(raised or final)[0]['summary']}" if raised or final else "")))
    return checks

