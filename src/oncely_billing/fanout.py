"""Fan-out mode of the free-tier threshold job: ``fan_out=N`` chunks of organizations, one child
job each, several workers at once; the scheduled run (the *parent*) ends when its chunks did.

Division of the work. The parent does what is done once per run: the outbox sweep, the rollup
refresh from the usage source and its checkpoint (:func:`oncely_billing.thresholds.prepare`).
Then it **plans**: the organization ids, read in one query, are cut into N contiguous, inclusive
id ranges holding equal numbers of organizations (the first range is open below, the last open
above, so an organization created meanwhile falls in one of them). Each child job
(``metering.free-tier-chunk``) evaluates and writes its range exactly as the single run does
(:func:`~oncely_billing.thresholds.evaluate` and :func:`~oncely_billing.thresholds.apply`, at
the parent's as-of instant, in fenced transactions of ``chunk_size`` organizations with their
outbox rows): results, emails and blocks are the single run's, and the outbox's unique key keeps
each (organization, cycle, threshold) notified once whatever runs twice.

Children go to ``fan_out_queue`` (default ``billing-chunks``), declared with
``max_running=fan_out_concurrency``: that many chunks run at once across the whole fleet,
whatever the number of workers. Each child retries alone under its own policy
(``fan_out_attempts``, jittered exponential backoff from ``fan_out_retry_delay``).

Records, in ``metering_state`` (no table of their own; rows older than 7 days are pruned when a
run plans):

* ``free_tier.fanout.<parent job id>`` — the **plan**: as-of, the parent's figures so far, and
  per chunk its id range and the id of its current child job. It is written in the *same fenced
  transaction* that enqueues the children, so a plan exists if and only if its children were
  enqueued, and a zombie parent (lease lost) can enqueue nothing.
* ``free_tier.fanout.<parent job id>.<chunk>`` — **done**: the chunk's figures, written by its
  child in a fenced transaction after its last write. A chunk is done when this row exists.

The parent's state machine (one parent job; every attempt — retried, rescued after its worker
died, released at shutdown — runs the same code under the job's id)::

    start ── plan row? ──no──► sweep, refresh rollup, checkpoint ──► PLAN: one fenced transaction
      │                        (or resume from the checkpoint)       writes the plan and enqueues
      │                                                              N children (unique key
      │                                                              free-tier-chunk:<job>:<i>)
      └──yes (a re-run attempt)──► REQUEUE: each chunk not done whose child ended failed or
                                   cancelled (or is gone) gets a new child, in one fenced
                                   transaction with the plan's new job id; chunks done or still
                                   waiting/running are left alone: nothing is enqueued twice
                  │
                  ▼
    WAIT, every fan_out_poll seconds: check the fence (a zombie stops: FenceRejected), read the
    children's states, then the done rows
      ├─ every chunk done ──► resolve chunk-failure records, record the run's figures, return
      │                       ──► job succeeded, slot ``ran``
      ├─ a chunk not done whose child ended failed/cancelled (its attempts are spent)
      │                   ──► raise ChunkFailed ──► the parent's retry policy: ``retryable`` (its
      │                       next attempt REQUEUEs that chunk alone) or, attempts spent,
      │                       ``failed`` and the slot ``failed``
      └─ asked to stop (timeout, shutdown, cancel, lost lease) ──► the attempt ends as the
                              engine says; children keep running and a next attempt waits for
                              them

The children's states are read before the done rows, so a child that wrote its done row and
then finished is never taken for a failure. The parent holds one worker thread while it waits:
the fleet needs a free thread (or another worker) for the children, which any default worker
(16 threads) has. ``oncely metering run-thresholds --fan-out N`` runs the parent in the command
and needs workers that serve ``fan_out_queue``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import oncely
from oncely_billing import db, thresholds
from oncely_billing.thresholds import ALL_ORGS, RunStats

if TYPE_CHECKING:
    from oncely_billing.runtime import Metering

log = logging.getLogger("oncely_billing.fanout")

CHUNK_TASK = "metering.free-tier-chunk"
PREFIX = "free_tier.fanout."
KEEP_RECORDS = timedelta(days=7)
SUMMED = ("orgs_changed", "usage_changed", "org_rows_written", "chunks", "failed_chunks",
          "notifications", "blocked", "unblocked")
ENDED_BADLY = (oncely.JobState.FAILED, oncely.JobState.CANCELLED)


class ChunkFailed(oncely.OncelyError):
    """A chunk's child job ended failed or cancelled: the parent's attempt fails."""


@dataclass(frozen=True)
class Chunk:
    index: int
    lo: int  # organization ids lo..hi, inclusive
    hi: int
    job_id: int


@dataclass(frozen=True)
class Plan:
    parent: int
    as_of: float
    chunks: tuple[Chunk, ...]
    figures: dict[str, Any]  # the parent's RunStats before the fan-out

    def dumps(self) -> str:
        return json.dumps({"as_of": self.as_of, "figures": self.figures,
                           "chunks": [[c.index, c.lo, c.hi, c.job_id] for c in self.chunks]})

    @classmethod
    def loads(cls, parent: int, text: str) -> Plan:
        data = json.loads(text)
        chunks = tuple(Chunk(*(int(v) for v in item)) for item in data["chunks"])
        return cls(parent, float(data["as_of"]), chunks, dict(data["figures"]))


def plan_key(parent: int) -> str:
    return f"{PREFIX}{parent}"


def done_key(parent: int, index: int) -> str:
    return f"{PREFIX}{parent}.{index:04d}"


def split(ids: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, inclusive id ranges with equal numbers of ``ids`` (sorted, unique),
    covering every integer: the first is open below, the last open above. Fewer ranges when
    there are fewer ids than parts; one range when there are none."""
    count = min(parts, len(ids))
    if count <= 1:
        return [ALL_ORGS]
    starts = [ids[len(ids) * i // count] for i in range(count)]
    return [(ALL_ORGS[0] if i == 0 else start,
             starts[i + 1] - 1 if i + 1 < count else ALL_ORGS[1])
            for i, start in enumerate(starts)]


# records ----------------------------------------------------------------------------------

def load_plan(app: oncely.App, parent: int) -> Plan | None:
    with db.connection(app) as conn:
        row = db.fetch_one(conn, db.sql_dialect(app), "state_get", {"key": plan_key(parent)})
    return None if row is None else Plan.loads(parent, row[0])


def load_done(app: oncely.App, parent: int) -> dict[int, dict[str, Any]]:
    """The figures of the chunks of ``parent`` that are done, by chunk index."""
    prefix = plan_key(parent) + ".%"
    with db.connection(app) as conn:
        rows = db.fetch_all(conn, db.sql_dialect(app), "state_prefix", {"prefix": prefix})
    return {int(key.rsplit(".", 1)[1]): json.loads(value) for key, value in rows}


def _enqueue(ctx: oncely.JobContext, conn: Any, plan_parent: int, as_of: float, index: int,
             lo: int, hi: int) -> int:
    args = {"parent": plan_parent, "chunk": index, "lo": lo, "hi": hi, "as_of": as_of}
    handle = ctx.app.enqueue_job(CHUNK_TASK, args, unique_key=f"free-tier-chunk:{plan_parent}:"
                                 f"{index}", connection=conn)
    return handle.id


def start(ctx: oncely.JobContext, parts: int, as_of: datetime, stats: RunStats) -> Plan:
    """PLAN: the ranges, and in one fenced transaction the plan row and every child job."""
    dialect = db.sql_dialect(ctx.app)
    with db.connection(ctx.app) as conn:
        ids = [int(row[0]) for row in db.fetch_all(conn, dialect, "org_ids")]
    ranges = split(ids, parts)
    now = ctx.now().timestamp()
    with ctx.fenced() as conn:
        db.run(conn, dialect, "state_prune", {
            "prefix": PREFIX + "%", "before": now - KEEP_RECORDS.total_seconds()})
        chunks = tuple(Chunk(i, lo, hi, _enqueue(ctx, conn, ctx.job_id, as_of.timestamp(), i,
                                                  lo, hi))
                       for i, (lo, hi) in enumerate(ranges))
        plan = Plan(ctx.job_id, as_of.timestamp(), chunks, dict(stats.__dict__))
        db.run(conn, dialect, "state_put", {"key": plan_key(ctx.job_id), "value": plan.dumps(),
                                            "now": now})
    log.info("free-tier run %d fanned out into %d chunks", ctx.job_id, len(chunks),
             extra={"event": "free_tier.fan_out", "chunks": len(chunks)})
    return plan


def _ended_badly(app: oncely.App, chunks: Sequence[Chunk]) -> dict[int, str]:
    """The chunks whose child job ended failed or cancelled, or is gone: index -> why."""
    ended = {}
    for chunk in chunks:
        job = app.read.job(chunk.job_id)
        if job is None:
            ended[chunk.index] = f"job {chunk.job_id} is gone"
        elif job.state in ENDED_BADLY:
            error = job.errors[-1].message.splitlines()[0] if job.errors else "no error recorded"
            ended[chunk.index] = f"job {chunk.job_id} {job.state.value}: {error}"
    return ended


def requeue(ctx: oncely.JobContext, plan: Plan) -> Plan:
    """REQUEUE: a new child for each chunk not done whose child ended badly; the rest stay."""
    ended = _ended_badly(ctx.app, plan.chunks)
    done = load_done(ctx.app, plan.parent)
    again = [c for c in plan.chunks if c.index in ended and c.index not in done]
    if not again:
        return plan
    dialect = db.sql_dialect(ctx.app)
    with ctx.fenced() as conn:
        renewed = {c.index: _enqueue(ctx, conn, plan.parent, plan.as_of, c.index, c.lo, c.hi)
                   for c in again}
        chunks = tuple(Chunk(c.index, c.lo, c.hi, renewed.get(c.index, c.job_id))
                       for c in plan.chunks)
        plan = Plan(plan.parent, plan.as_of, chunks, plan.figures)
        db.run(conn, dialect, "state_put", {"key": plan_key(plan.parent), "value": plan.dumps(),
                                            "now": ctx.now().timestamp()})
    log.warning("free-tier run %d: chunks %s run again (%s)", plan.parent,
                [c.index for c in again], "; ".join(ended[c.index] for c in again),
                extra={"event": "free_tier.chunks_requeued"})
    return plan


def wait(ctx: oncely.JobContext, rt: Metering, plan: Plan) -> dict[int, dict[str, Any]]:
    """WAIT until every chunk is done (returns their figures) or one ended badly (raises)."""
    total = len(plan.chunks)
    while True:
        ctx.check_fence()
        done = load_done(ctx.app, plan.parent)  # a cheap first look
        pending = [c for c in plan.chunks if c.index not in done]
        if pending:
            ended = _ended_badly(ctx.app, pending)  # states first, then the done rows again
            done = load_done(ctx.app, plan.parent)
            pending = [c for c in pending if c.index not in done]
            failed = [c for c in pending if c.index in ended]
            if failed:
                first = failed[0]
                raise ChunkFailed(
                    f"{len(failed)} of {total} chunks failed for good; chunk {first.index} "
                    f"(organizations {first.lo}..{first.hi}): {ended[first.index]}")
        if not pending:
            return done
        if ctx.cancel_event.wait(rt.settings.fan_out_poll):
            ctx.raise_if_cancelled()


# the two handlers -------------------------------------------------------------------------

def run_fanned_out(ctx: oncely.JobContext, rt: Metering, parts: int,
                   full: bool = False) -> dict[str, Any]:
    """The parent: plan (or pick up the plan of an earlier attempt), wait, sum the figures."""
    rt.ensure_schema()
    started = time.perf_counter()
    plan = load_plan(ctx.app, ctx.job_id)
    if plan is None:
        stats = RunStats()
        as_of = thresholds.prepare(ctx, rt, full, stats)
        plan = start(ctx, parts, as_of, stats)
    else:
        known = {f.name for f in fields(RunStats)}
        stats = RunStats(**{k: v for k, v in plan.figures.items() if k in known})
        stats.resumed = True
        plan = requeue(ctx, plan)
    mark = time.perf_counter()
    done = wait(ctx, rt, plan)
    stats.timings["chunks"] = round(time.perf_counter() - mark, 3)
    failed_orgs: set[int] = set()
    for figures in done.values():
        for name in SUMMED:
            setattr(stats, name, getattr(stats, name) + int(figures.get(name, 0)))
        failed_orgs.update(int(org) for org in figures.get("failed_orgs", ()))
    thresholds.resolve_failures(ctx, thresholds.open_chunk_failures(ctx.app), failed_orgs, stats)
    stats.timings["total"] = round(time.perf_counter() - started, 3)
    thresholds._record_last_run(ctx, stats)
    result = stats.__dict__.copy()
    result.update(fan_out=len(plan.chunks), chunk_jobs=[c.job_id for c in plan.chunks],
                  chunk_attempts=sum(int(done[c.index].get("attempt", 1)) for c in plan.chunks))
    log.info("free-tier run (fanned out): %s", result, extra={"event": "free_tier.run"})
    return result


def run_chunk(ctx: oncely.JobContext, rt: Metering, parent: int, chunk: int, lo: int, hi: int,
              as_of: float) -> dict[str, Any]:
    """A child: evaluate and write organizations ``lo..hi`` as of the parent's instant, then
    record the chunk done (fenced)."""
    rt.ensure_schema()
    started = time.perf_counter()
    stats = RunStats(as_of=datetime.fromtimestamp(as_of, UTC).isoformat())
    candidates = thresholds.evaluate(ctx.app, rt.settings, datetime.fromtimestamp(as_of, UTC),
                                     (lo, hi))
    failed = thresholds.apply(ctx, rt, candidates, stats, resolve=False)
    figures: dict[str, Any] = {name: getattr(stats, name) for name in SUMMED}
    figures.update(failed_orgs=sorted(failed), attempt=ctx.attempt, job_id=ctx.job_id,
                   seconds=round(time.perf_counter() - started, 3))
    with ctx.fenced() as conn:
        db.run(conn, db.sql_dialect(ctx.app), "state_put", {
            "key": done_key(parent, chunk), "value": json.dumps(figures),
            "now": ctx.now().timestamp()})
    return figures


def install_fan_out(app: oncely.App, rt: Metering) -> oncely.Task:
    """Register the chunk task and declare its queue's fleet-wide limit (unless the app
    declared that queue itself: its declaration stands)."""
    settings = rt.settings

    def free_tier_chunk(ctx: oncely.JobContext, parent: int, chunk: int, lo: int, hi: int,
                        as_of: float) -> dict[str, Any]:
        return run_chunk(ctx, rt, parent, chunk, lo, hi, as_of)

    if settings.fan_out_queue not in app.queues:
        app.queue(settings.fan_out_queue, max_running=settings.fan_out_concurrency)
    task: oncely.Task = app.task(
        name=CHUNK_TASK, queue=settings.fan_out_queue, timeout=settings.job_timeout,
        singleton=False,
        retry=oncely.RetryPolicy(attempts=settings.fan_out_attempts, backoff="exponential",
                                 base_delay=settings.fan_out_retry_delay, max_delay=600.0,
                                 jitter=True),
    )(free_tier_chunk)
    return task
