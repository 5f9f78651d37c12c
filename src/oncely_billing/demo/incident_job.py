"""The free-tier threshold job **as the incident's system had it** — the demo's bad example.

``oncely demo`` runs it in its unsafe phase instead of :mod:`oncely_billing.thresholds`; nothing
else does, and nothing here is a pattern to follow. It keeps the reference system's behaviours,
each of which played its part in the incident:

* **A full recount, every run**: every organization's whole current cycle is counted again from
  the raw events (the reference issued three analytics queries per day of look-back, ~96 per
  run), with no rollup and nothing kept from the previous run. That makes each run long — long
  enough to outlive a lease nobody renews, so the engine hands the run to a second worker while
  the first is still running: the engine's multiplier, **runs per slot**, grows with the job's
  own slowness.
* **Every organization row rewritten, every run**, changed or not, in chunks of 1,000 (one
  ``UPDATE … FROM (VALUES …)`` each, a failed chunk logged and skipped): **rows written per run
  = organizations**. Multiplied by the runs per slot, that is the write explosion: 517,788
  organization writes in 20 minutes where ~50,000 per hour were expected (~31x).
* **The email is sent before the state is committed**, in the middle of the run, and **there is
  no outbox**: a run that overlaps another one, is handed over, fails or is retried after sending
  but before its chunk commits sends the same email again. Only state changes are emailed
  (none → WARNING at 50k, → BLOCKED at 250k): the 100k and 200k notices are never sent.
* **No mutual exclusion and no fencing**: its writes go through plain transactions, so a run
  whose lease expired (a zombie) still writes every row, and two runs overwrite each other's.

Its cycle arithmetic and thresholds are oncely's (:mod:`oncely_billing.cycle`, the plan limits),
and deleted projects do not count, so both phases agree on every organization's usage and state:
the differences the report shows come from the behaviours above, not from different maths.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import make_msgid
from typing import Any

import numpy as np

import oncely
from oncely_billing import THRESHOLDS_TASK, db, metering_of, notify
from oncely_billing.cycle import Cycle, cycles_by_anchor_day, earliest_cycle_start
from oncely_billing.rollup import ProjectMap
from oncely_billing.runtime import Metering
from oncely_billing.states import ThresholdState

log = logging.getLogger("oncely_billing.demo.incident_job")

CHUNK = 1000  # organization rows per UPDATE, as in the reference system
ORGS = ("SELECT id, name, plan, subscription_status, plan_override, external_billing, anchor_day,"
        " cycle_usage, threshold_state FROM metering_organizations ORDER BY id")
PAID_STATUSES = ("active", "trialing", "past_due")
ORG_COLUMNS = ("id", "cycle_day", "usage", "state", "state_changed", "usage_changed")
RANK = {None: 0, ThresholdState.WARNING: 1, ThresholdState.BLOCKED: 2}


@dataclass(frozen=True)
class Org:
    id: int
    name: str
    plan: str
    paid: bool
    anchor_day: int
    usage: int  # as stored by the previous run
    state: ThresholdState | None


def install(app: oncely.App) -> None:
    """Make ``app``'s free-tier task run this job instead of oncely's (the task keeps its name,
    queue and schedule, so the engine's figures count its runs as the same job's)."""
    runtime = metering_of(app)

    def incident_free_tier(ctx: oncely.JobContext, full: bool = False) -> dict[str, Any]:
        return run(ctx, runtime)

    app.tasks[THRESHOLDS_TASK].fn = incident_free_tier


def load_orgs(app: oncely.App) -> list[Org]:
    with db.connection(app) as conn:
        rows = conn.execute(ORGS).fetchall()
    return [Org(int(r[0]), str(r[1]), str(r[2] or "free"),
                (r[3] or "") in PAID_STATUSES or r[4] is not None or r[5] is not None,
                int(r[6]), int(r[7] or 0), ThresholdState(r[8]) if r[8] else None)
            for r in rows]


def recount(rt: Metering, app: oncely.App, orgs: list[Org], cycles: dict[int, Cycle],
            as_of: datetime) -> dict[int, int]:
    """Every organization's current-cycle usage, counted again from the raw events of every
    day since the earliest cycle start (no rollup, nothing kept from the previous run)."""
    projects = ProjectMap.load(app)
    top = max((org.id for org in orgs), default=0) + 1
    first = np.full(top, np.iinfo(np.int64).max, dtype=np.int64)  # cycle start, epoch day
    for org in orgs:
        first[org.id] = db.epoch_day(cycles[org.anchor_day].start)
    earliest = earliest_cycle_start(as_of.date())
    start = datetime(earliest.year, earliest.month, earliest.day, tzinfo=UTC)
    counts = rt.source.usage_by_project(start, as_of, "day")
    usage = np.zeros(top, dtype=np.int64)
    if len(counts):
        org_ids, live = projects.orgs_of(counts.project_id)
        org_ids, units, days = org_ids[live], counts.units[live], counts.bucket[live] // 86400
        counted = (org_ids < top) & (days >= first[np.minimum(org_ids, top - 1)])
        usage = np.bincount(org_ids[counted], weights=units[counted],
                            minlength=top).astype(np.int64)
    return {org.id: int(usage[org.id]) for org in orgs}


def level(usage: int, warn_at: int, block_at: int) -> ThresholdState | None:
    if usage >= block_at:
        return ThresholdState.BLOCKED
    if usage >= warn_at:
        return ThresholdState.WARNING
    return None


def send_email(app: oncely.App, rt: Metering, org: Org, cycle: Cycle, state: ThresholdState,
               usage: int) -> bool:
    """Email the organization's owners and admins now, before anything is committed."""
    limits = rt.settings.limits_for(org.plan)
    blocked = state == ThresholdState.BLOCKED
    note = notify.Notification(
        outbox_id=0, org_id=org.id, org_name=org.name, cycle_start=cycle.start,
        threshold=limits.block_at if blocked else limits.warn_at,
        kind=notify.BLOCKED_KIND if blocked else notify.WARNING_KIND, usage=usage,
        included=limits.included, block_at=limits.block_at, reset_date=cycle.end,
        status="pending", attempts=0)
    to = notify.recipients(app, org.id)
    if not to:
        return False
    message = notify.compose(note, to, rt.settings)
    del message["Message-ID"]
    message["Message-ID"] = make_msgid(domain="billing.example.com")  # a new one per send
    notify.send(message, rt.settings.smtp)
    return True


def run(ctx: oncely.JobContext, rt: Metering) -> dict[str, Any]:
    """One run: recount everything and email state changes at once (:func:`evaluate`), then
    rewrite every row (:func:`write`)."""
    rt.ensure_schema()
    started = time.perf_counter()
    evaluated = evaluate(ctx.app, rt, ctx.now())
    written, failed = write(ctx.app, evaluated.rows, ctx.now())
    figures = {"org_rows_written": written, "orgs": len(evaluated.rows),
               "emails_sent": evaluated.emails, "emails_failed": evaluated.failed_emails,
               "failed_chunks": failed, "as_of": evaluated.as_of.isoformat(),
               "seconds": round(time.perf_counter() - started, 3)}
    log.info("incident free-tier run: %s", figures)
    return figures


@dataclass
class Evaluated:
    as_of: datetime
    rows: list[list[Any]]  # one per organization: ORG_COLUMNS
    emails: int = 0
    failed_emails: int = 0


def evaluate(app: oncely.App, rt: Metering, as_of: datetime) -> Evaluated:
    """Recount every organization and send the emails of its state changes, now: nothing is
    committed yet, so a run that overlaps this one, or retries it, sends them again."""
    orgs = load_orgs(app)
    cycles = cycles_by_anchor_day(as_of.date())
    usage = recount(rt, app, orgs, cycles, as_of)
    settings = rt.settings
    found = Evaluated(as_of, [])
    for org in orgs:
        cycle = cycles[org.anchor_day]
        if org.paid:  # paid first: the state is cleared (and the row rewritten all the same)
            state, counted = None, org.usage
        else:
            counted = usage[org.id]
            limits = settings.limits_for(org.plan)
            state = level(counted, limits.warn_at, limits.block_at) if settings.enforce else None
            if state is not None and RANK[state] > RANK[org.state]:
                try:
                    found.emails += send_email(app, rt, org, cycle, state, counted)
                except Exception as exc:
                    found.failed_emails += 1
                    log.error("email to organization %d failed: %s", org.id, exc)
        found.rows.append([org.id, db.epoch_day(cycle.start), counted,
                           state.value if state else None, state != org.state,
                           counted != org.usage])
    return found


def write(app: oncely.App, rows: list[list[Any]], now: datetime) -> tuple[int, int]:
    """Rewrite every row, ``CHUNK`` at a time, each chunk in its own unfenced transaction; a
    chunk that fails is logged and skipped. Returns (rows written, chunks failed)."""
    dialect = db.sql_dialect(app)
    written = failed = 0
    for chunk in db.chunks(rows, CHUNK):
        try:
            with db.connection(app) as conn:  # no fence: a run whose lease expired writes too
                db.run(conn, dialect, "orgs_update_batch",
                       {**db.batch_params(dialect, ORG_COLUMNS, chunk), "now": now.timestamp()})
            written += len(chunk)
        except Exception as exc:
            failed += 1
            log.error("chunk of %d organizations failed: %s", len(chunk), exc)
    return written, failed
