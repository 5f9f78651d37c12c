"""The free-tier threshold job (hourly at :35, singleton, overlap ``skip``).

One run:

1. **Refresh the rollup** from the usage source with *one* query, whatever the number of
   organizations. Incremental runs recount from the day before the previous run's day through
   now (today and yesterday, normally), which keeps late events correct and makes the run
   idempotent; the first run of the day after ``reconcile_hour`` (and the very first run)
   recounts every current cycle. Only changed (organization, day) rows are written. The source
   is read before anything is written: a source that stays down fails the run with nothing
   written, and the next run catches up from the recorded progress.
2. **Checkpoint** (``ctx.checkpoint``): an attempt that takes over this job skips step 1.
3. **Evaluate** every organization's current-cycle usage from the rollup in one set-based query
   that returns only organizations whose usage, cycle or state may change; the state machine
   (:mod:`oncely_billing.states`) decides for each.
4. **Write** the changes in chunks of ``chunk_size`` organizations, one set-based statement per
   chunk, each chunk in its own fenced transaction with its outbox rows, their
   ``send-notification`` jobs and the gate's generation bump. A chunk that fails is recorded in
   ``metering_chunk_failures`` and retried by the next run; the other chunks still commit.

Before step 1 the run sweeps the notification outbox (:mod:`oncely_billing.sweep`): pending
rows whose send job ended get a new one.

With ``fan_out=N`` (:mod:`oncely_billing.fanout`) the run does the sweep and steps 1-2 itself,
then hands steps 3-4 to N child jobs, one per range of organization ids
(:func:`evaluate` and :func:`apply` restricted to the range), and waits for them.

Every write goes through ``ctx.fenced()``: once another attempt holds the lease, this one's
writes raise :class:`oncely.FenceRejected` and change nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import oncely
from oncely_billing import db, rollup
from oncely_billing.cycle import Cycle, cycles_by_anchor_day, earliest_cycle_start
from oncely_billing.notify import BLOCKED_KIND, SEND_TASK, WARNING_KIND
from oncely_billing.settings import MeteringSettings
from oncely_billing.states import Decision, Observation, ThresholdState, decide
from oncely_billing.sweep import sweep

if TYPE_CHECKING:
    from oncely_billing.runtime import Metering

log = logging.getLogger("oncely_billing.thresholds")

THRESHOLDS_TASK = "metering.free-tier-thresholds"
THRESHOLDS_SCHEDULE = "free-tier-thresholds"
PROGRESS_KEY = "free_tier.progress"
LAST_RUN_KEY = "free_tier.last_run"
RESUME_WITHIN = timedelta(minutes=30)
ALL_ORGS = (-(2**63), 2**63 - 1)  # inclusive bounds of organization ids: every organization


@dataclass(frozen=True)
class Progress:
    """What the previous runs achieved (stored in ``metering_state``)."""

    rollup_through: datetime | None = None  # usage up to here is in the rollup
    reconciled_on: date | None = None  # the UTC day of the last full recount

    @classmethod
    def load(cls, app: oncely.App) -> Progress:
        dialect = db.sql_dialect(app)
        with db.connection(app) as conn:
            row = db.fetch_one(conn, dialect, "state_get", {"key": PROGRESS_KEY})
        if row is None:
            return cls()
        data = json.loads(row[0])
        through = data.get("rollup_through")
        reconciled = data.get("reconciled_on")
        return cls(
            datetime.fromtimestamp(through, UTC) if through is not None else None,
            date.fromisoformat(reconciled) if reconciled else None,
        )

    def dumps(self) -> str:
        return json.dumps({
            "rollup_through": self.rollup_through.timestamp() if self.rollup_through else None,
            "reconciled_on": self.reconciled_on.isoformat() if self.reconciled_on else None,
        })


@dataclass(frozen=True)
class Window:
    full: bool
    start: datetime  # midnight UTC of the first recounted day
    end: datetime  # the run's as-of instant

    @property
    def first_day(self) -> int:
        return db.epoch_day(self.start.date())

    @property
    def last_day(self) -> int:
        return db.epoch_day(self.end.date())


def plan_window(as_of: datetime, progress: Progress, settings: MeteringSettings,
                force_full: bool = False) -> Window:
    today = as_of.date()
    earliest = earliest_cycle_start(today)
    through = progress.rollup_through
    full = (
        force_full
        or through is None
        or through.date() < earliest
        or (progress.reconciled_on != today and as_of.hour >= settings.reconcile_hour)
    )
    # normally today and yesterday; after a gap, from the day before the last run's day
    first = earliest if full or through is None else min(today, through.date()) - timedelta(1)
    return Window(full, datetime(first.year, first.month, first.day, tzinfo=UTC), as_of)


@dataclass
class RunStats:
    mode: str = "incremental"
    as_of: str = ""
    window_start: str = ""
    resumed: bool = False
    source_queries: int = 0
    usage_rows: int = 0
    rollup_upserted: int = 0
    rollup_deleted: int = 0
    orgs_changed: int = 0
    usage_changed: int = 0
    org_rows_written: int = 0
    chunks: int = 0
    failed_chunks: int = 0
    retried_orgs: int = 0
    notifications: int = 0
    notifications_requeued: int = 0
    blocked: int = 0
    unblocked: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def refresh(ctx: oncely.JobContext, rt: Metering, window: Window, progress: Progress,
            stats: RunStats) -> None:
    """Step 1: recount the window from the usage source and write the rollup's difference."""
    started = time.perf_counter()
    before = rt.source.queries
    counts = rt.source.usage_by_project(window.start, window.end, "day")
    stats.source_queries += rt.source.queries - before
    stats.usage_rows = len(counts)
    stats.timings["source"] = round(time.perf_counter() - started, 3)
    mark = time.perf_counter()
    projects = rollup.ProjectMap.load(ctx.app)
    fresh = rollup.aggregate(counts, projects, window.first_day)
    stored = rollup.load_window(ctx.app, window.first_day, window.last_day)
    upserts, deletes = rollup.diff(fresh, stored, window.first_day)
    stats.timings["aggregate"] = round(time.perf_counter() - mark, 3)
    mark = time.perf_counter()
    done = Progress(window.end, window.end.date() if window.full else progress.reconciled_on)
    retention = window.last_day - rt.settings.rollup_retention_days

    def finish(conn: Any, dialect: str) -> None:
        params = {"key": PROGRESS_KEY, "value": done.dumps(), "now": ctx.now().timestamp()}
        db.run(conn, dialect, "state_put", params)
        if window.full:
            db.run(conn, dialect, "rollup_prune", {"before_day": retention})

    written = rollup.write(ctx, upserts, deletes, rt.settings.rollup_chunk_size, finish)
    stats.rollup_upserted, stats.rollup_deleted = written.upserted, written.deleted
    stats.timings["rollup_write"] = round(time.perf_counter() - mark, 3)


@dataclass(frozen=True)
class Candidate:
    observation: Observation
    plan: str
    cycle: Cycle


def evaluate(app: oncely.App, settings: MeteringSettings, as_of: datetime,
             org_range: tuple[int, int] = ALL_ORGS) -> list[Candidate]:
    """Step 3: the organizations (ids in ``org_range``, inclusive) whose usage, cycle or state
    may change (one query)."""
    dialect = db.sql_dialect(app)
    cycles = cycles_by_anchor_day(as_of.date())
    cycle_rows = [[day, db.epoch_day(cycle.start)] for day, cycle in cycles.items()]
    plan_rows = [[name, limits.warn_at, limits.block_at] for name, limits in settings.plans.items()]
    free = settings.limits_for("free")
    params = {
        **db.batch_params(dialect, ("cycle_anchor_day", "cycle_start_day"), cycle_rows, "cycles"),
        **db.batch_params(dialect, ("plan_name", "plan_warn_at", "plan_block_at"), plan_rows,
                          "plans"),
        "default_warn_at": free.warn_at, "default_block_at": free.block_at,
        "enforce": settings.enforce,
        "earliest_day": min(start_day for _, start_day in cycle_rows),
        "org_lo": org_range[0], "org_hi": org_range[1],
    }
    with db.connection(app) as conn:
        rows = db.fetch_all(conn, dialect, "evaluate_orgs", params)
    found = []
    for row in rows:
        state = ThresholdState(row[5]) if row[5] else None
        observation = Observation(
            org_id=int(row[0]), paid=bool(row[1]),
            previous_cycle_day=None if row[3] is None else int(row[3]),
            previous_usage=int(row[4]), previous_state=state, cycle_day=int(row[6]),
            usage=None if row[7] is None else int(row[7]),
        )
        found.append(Candidate(observation, str(row[2]), cycles[int(row[8])]))
    return found


def _outbox_row(decision: Decision, candidate: Candidate, settings: MeteringSettings) -> list[Any]:
    limits = settings.limits_for(candidate.plan)
    assert decision.notify is not None
    kind = BLOCKED_KIND if decision.notify >= limits.block_at else WARNING_KIND
    return [decision.org_id, decision.cycle_day, decision.notify, kind, decision.usage,
            limits.included, limits.block_at, db.epoch_day(candidate.cycle.end)]


def write_chunk(ctx: oncely.JobContext, rt: Metering,
                chunk: Sequence[tuple[Decision, Candidate]]) -> int:
    """Step 4 for one chunk, in one fenced transaction; returns the notifications queued."""
    dialect = db.sql_dialect(ctx.app)
    now = ctx.now().timestamp()
    org_rows = [[d.org_id, d.cycle_day, d.usage, d.state.value if d.state else None,
                 d.state_changed, d.usage_changed] for d, _ in chunk]
    notes = [_outbox_row(d, c, rt.settings) for d, c in chunk if d.notify is not None]
    with ctx.fenced() as conn:
        org_columns = ("id", "cycle_day", "usage", "state", "state_changed", "usage_changed")
        db.run(conn, dialect, "orgs_update_batch",
               {**db.batch_params(dialect, org_columns, org_rows), "now": now})
        queued = 0
        if notes:
            columns = ("org_id", "cycle_day", "threshold", "kind", "usage", "included",
                       "block_at", "reset_day")
            cursor = db.run(conn, dialect, "outbox_insert_batch",
                            {**db.batch_params(dialect, columns, notes), "now": now})
            for (outbox_id,) in cursor.fetchall():
                ctx.app.enqueue_job(SEND_TASK, {"outbox_id": int(outbox_id)},
                                    unique_key=f"metering-notify:{outbox_id}", connection=conn)
                queued += 1
        if any(d.blocked_changed for d, _ in chunk):
            db.run(conn, dialect, "gate_generation_bump", {"now": now})
    return queued


def apply(ctx: oncely.JobContext, rt: Metering, candidates: list[Candidate],
          stats: RunStats, resolve: bool = True) -> set[int]:
    """Step 4: decide and write, chunk by chunk; returns the organizations whose write failed.
    With ``resolve`` the chunk failures of earlier runs that this one wrote are closed (a
    fanned-out run's parent does that once for all its chunks instead)."""
    settings = rt.settings
    changes: list[tuple[Decision, Candidate]] = []
    for candidate in candidates:
        limits = settings.limits_for(candidate.plan)
        decision = decide(candidate.observation, limits, settings.enforce)
        if decision is not None:
            changes.append((decision, candidate))
    open_failures = open_chunk_failures(ctx.app) if resolve else []
    failed_orgs: set[int] = set()
    for chunk in db.chunks(changes, settings.chunk_size):
        stats.chunks += 1
        try:
            stats.notifications += write_chunk(ctx, rt, chunk)
        except oncely.FenceRejected:
            raise
        except Exception as exc:
            stats.failed_chunks += 1
            failed_orgs.update(d.org_id for d, _ in chunk)
            _record_failure(ctx, [d.org_id for d, _ in chunk], exc)
            continue
        stats.org_rows_written += len(chunk)
        stats.usage_changed += sum(1 for d, _ in chunk if d.usage_changed)
        stats.blocked += sum(1 for d, _ in chunk if d.state_changed and d.state == "BLOCKED")
        stats.unblocked += sum(
            1 for d, _ in chunk if d.state_changed and d.previous_state == "BLOCKED"
            and d.state != "BLOCKED")
        rt.gate.invalidate(d.org_id for d, _ in chunk if d.blocked_changed)
    stats.orgs_changed = len(changes)
    resolve_failures(ctx, open_failures, failed_orgs, stats)
    return failed_orgs


def resolve_failures(ctx: oncely.JobContext, open_failures: list[tuple[int, list[int]]],
                     failed_orgs: set[int], stats: RunStats) -> None:
    """Close the recorded chunk failures none of whose organizations failed again."""
    resolved = [fid for fid, orgs in open_failures if not failed_orgs.intersection(orgs)]
    stats.retried_orgs = sum(len(orgs) for fid, orgs in open_failures if fid in resolved)
    if resolved:
        _resolve_failures(ctx, resolved)


def open_chunk_failures(app: oncely.App) -> list[tuple[int, list[int]]]:
    """Chunks of organization writes that failed and were not written by a later run yet."""
    dialect = db.sql_dialect(app)
    with db.connection(app) as conn:
        rows = db.fetch_all(conn, dialect, "chunk_failures_open")
    return [(int(row[0]), [int(org) for org in json.loads(row[1])]) for row in rows]


def _record_failure(ctx: oncely.JobContext, org_ids: list[int], exc: Exception) -> None:
    message = f"{type(exc).__name__}: {exc}"[:1000]
    log.error("free-tier chunk of %d organizations failed: %s", len(org_ids), message,
              extra={"event": "free_tier.chunk_failed"})
    dialect = db.sql_dialect(ctx.app)
    with ctx.fenced() as conn:
        db.run(conn, dialect, "chunk_failure_insert", {
            "job_id": ctx.job_id, "now": ctx.now().timestamp(),
            "org_ids": json.dumps(org_ids), "error": message,
        })


def _resolve_failures(ctx: oncely.JobContext, ids: list[int]) -> None:
    dialect = db.sql_dialect(ctx.app)
    with ctx.fenced() as conn:
        db.run(conn, dialect, "chunk_failures_resolve", {
            "ids": json.dumps(ids) if dialect == "sqlite" else ids,
            "job_id": ctx.job_id, "now": ctx.now().timestamp(),
        })


def _record_last_run(ctx: oncely.JobContext, stats: RunStats) -> None:
    """The figures ``oncely_billing.metrics`` shows for the last run."""
    figures = {"finished_at": ctx.now().isoformat(), "duration": stats.timings["total"],
               "org_rows_written": stats.org_rows_written, "notifications": stats.notifications,
               "notifications_requeued": stats.notifications_requeued,
               "blocked": stats.blocked, "unblocked": stats.unblocked, "mode": stats.mode}
    with ctx.fenced() as conn:
        db.run(conn, db.sql_dialect(ctx.app), "state_put", {
            "key": LAST_RUN_KEY, "value": json.dumps(figures), "now": ctx.now().timestamp()})


def prepare(ctx: oncely.JobContext, rt: Metering, full: bool, stats: RunStats) -> datetime:
    """The sweep and steps 1-2 (or the resume from the checkpoint); returns the run's as-of."""
    # first, before the usage source can fail the run: no notification stays pending for good
    swept = sweep(ctx, rt.settings, ctx.app.get_task(SEND_TASK))
    stats.notifications_requeued = swept.requeued
    checkpoint = ctx.last_checkpoint if isinstance(ctx.last_checkpoint, dict) else {}
    resumable = checkpoint.get("stage") == "rollup_done" and isinstance(
        checkpoint.get("as_of"), float | int)
    as_of = ctx.now()
    if resumable and as_of - datetime.fromtimestamp(checkpoint["as_of"], UTC) < RESUME_WITHIN:
        as_of = datetime.fromtimestamp(checkpoint["as_of"], UTC)
        stats.resumed, stats.mode = True, str(checkpoint.get("mode", "incremental"))
    else:
        progress = Progress.load(ctx.app)
        window = plan_window(as_of, progress, rt.settings, force_full=full)
        stats.mode = "full" if window.full else "incremental"
        stats.window_start = window.start.isoformat()
        refresh(ctx, rt, window, progress, stats)
        ctx.checkpoint({"stage": "rollup_done", "as_of": as_of.timestamp(), "mode": stats.mode})
    stats.as_of = as_of.isoformat()
    return as_of


def run_free_tier(ctx: oncely.JobContext, rt: Metering, full: bool = False) -> dict[str, Any]:
    """The job's handler body; returns the run's figures (stored as the job's result)."""
    rt.ensure_schema()
    started = time.perf_counter()
    stats = RunStats()
    as_of = prepare(ctx, rt, full, stats)
    mark = time.perf_counter()
    candidates = evaluate(ctx.app, rt.settings, as_of)
    stats.timings["evaluate"] = round(time.perf_counter() - mark, 3)
    mark = time.perf_counter()
    apply(ctx, rt, candidates, stats)
    stats.timings["write"] = round(time.perf_counter() - mark, 3)
    stats.timings["total"] = round(time.perf_counter() - started, 3)
    _record_last_run(ctx, stats)
    log.info("free-tier run: %s", stats, extra={"event": "free_tier.run"})
    return stats.__dict__.copy()
