"""The demo's data: one DuckDB usage dataset, and a fresh, identically prepared store per phase.

Preparing a store (:func:`prepare_store`):

1. the engine and metering schemas, and the seeded organizations, projects and members
   (:func:`oncely.metering.seed.load_store`);
2. Stripe customer ids kept for the first :data:`~oncely.sim.plan.STRIPE_CUSTOMERS` organizations
   that have one, cleared for the others, so the local stub keeps up at demo speed;
3. the two billing schedules, registered an hour before the day by "the deployment that ran
   before", so the slots of the day's first hour belong to their history;
4. the initial full recount of the free-tier job (its rollup of ~30 days of usage), run once
   half an hour before the day starts, as that deployment would have left it — under a task of
   its own, so the schedules' execution counts hold only the day's runs — and the emails it
   queued, sent (to the demo's SMTP capture, before the day's count starts);
5. a write log: a trigger appends ``(org_id, updated_at)`` to ``sim_org_writes`` for every row
   of ``metering_organizations`` the free-tier job writes, so writes are counted per hour, not
   inferred from the last ``updated_at``.

With SQLite the prepared file is copied for each phase; with PostgreSQL each phase gets its own
schema, prepared the same way.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import oncely
from oncely.maintenance.enqueuer import register_schedules
from oncely.metering import build_app, metering_of, seed
from oncely.metering.meter import TASK_NAME as STRIPE_TASK
from oncely.metering.settings import SmtpSettings
from oncely.metering.stripe_usage import install_stripe_usage_metering
from oncely.metering.thresholds import run_free_tier
from oncely.sim.plan import HEAVY_FRACTION, Plan, scale_timeouts
from oncely.store.base import JobState
from oncely.testing import run_job, wait_until, worker_running

Progress = Callable[[str, int, int], None]
WARM_UP_TASK = "sim.initial-recount"
DECLARED_BEFORE = timedelta(hours=1)  # the schedules exist from here: both first slots count
WARM_UP_BEFORE = timedelta(minutes=30)
FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

TRIM_CUSTOMERS = """UPDATE metering_organizations SET stripe_customer_id = NULL
WHERE stripe_customer_id IS NOT NULL AND id NOT IN (
    SELECT id FROM (SELECT id FROM metering_organizations
                    WHERE stripe_customer_id IS NOT NULL AND stripe_customer_id <> ''
                    ORDER BY id LIMIT {keep}) AS kept)"""
COUNT_CUSTOMERS = """SELECT COUNT(*) FROM metering_organizations
WHERE stripe_customer_id IS NOT NULL AND stripe_customer_id <> ''"""
WRITE_LOG = {
    "sqlite": [
        "CREATE TABLE IF NOT EXISTS sim_org_writes (org_id INTEGER NOT NULL, at REAL NOT NULL)",
        """CREATE TRIGGER IF NOT EXISTS sim_org_write AFTER UPDATE OF updated_at
           ON metering_organizations
           BEGIN INSERT INTO sim_org_writes (org_id, at) VALUES (NEW.id, NEW.updated_at); END""",
    ],
    "postgresql": [
        "CREATE TABLE IF NOT EXISTS sim_org_writes (org_id BIGINT NOT NULL, "
        "at DOUBLE PRECISION NOT NULL)",
        """CREATE OR REPLACE FUNCTION sim_org_write() RETURNS trigger AS $$
           BEGIN
               INSERT INTO sim_org_writes (org_id, at)
               VALUES (NEW.id, EXTRACT(EPOCH FROM NEW.updated_at));
               RETURN NULL;
           END $$ LANGUAGE plpgsql""",
        "DROP TRIGGER IF EXISTS sim_org_write ON metering_organizations",
        """CREATE TRIGGER sim_org_write AFTER UPDATE OF updated_at ON metering_organizations
           FOR EACH ROW EXECUTE FUNCTION sim_org_write()""",
    ],
}


@dataclass(frozen=True)
class Dataset:
    usage_path: Path
    orgs: int
    projects: int
    paid_orgs: int
    events: int
    end: datetime
    seconds: float

    @property
    def usage_url(self) -> str:
        return f"duckdb:///{self.usage_path}"  # an absolute path: duckdb:////dir/usage.duckdb


@dataclass(frozen=True)
class Prepared:
    url: str
    stripe_customers: int
    warm_up_seconds: float
    warm_up: dict[str, Any]


def build_usage(plan: Plan, progress: Progress) -> Dataset:
    """Generate the usage events (DuckDB) for ``plan.orgs`` organizations."""
    path = plan.out / "usage.duckdb"
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    seed.build_usage(path, orgs=plan.orgs, seed=plan.seed, end=plan.usage_end,
                     heavy_fraction=HEAVY_FRACTION, progress=progress)
    found = seed.summary(path, plan.usage_end)
    return Dataset(path, found.orgs, found.projects, found.paid_orgs, found.events,
                   plan.usage_end, time.perf_counter() - started)


def phase_urls(plan: Plan) -> dict[str, str]:
    """A fresh store URL per phase (``unsafe``, ``guarded``)."""
    names = ("unsafe", "guarded")
    if plan.store.startswith(("postgresql://", "postgres://")):
        token = uuid.uuid4().hex[:8]
        return {name: with_schema(plan.store, f"oncely_demo_{token}_{name}") for name in names}
    if plan.store:
        base = Path(plan.store.removeprefix("sqlite:///"))
        paths = {name: base.with_name(f"{base.stem}-{name}{base.suffix or '.db'}")
                 for name in names}
    else:
        paths = {name: plan.out / f"{name}.db" for name in names}
    for path in paths.values():
        remove_sqlite(path)
    return {name: f"sqlite:///{path.resolve()}" for name, path in paths.items()}


def with_schema(url: str, schema: str | None) -> str:
    """``url`` with oncely's ``schema`` parameter set to ``schema`` (or removed: None)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in ("schema", "pool_max")]
    if schema is not None:
        query.append(("schema", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


def remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def prepare_stores(plan: Plan, data: Dataset, urls: dict[str, str], smtp: SmtpSettings,
                   progress: Progress) -> dict[str, Prepared]:
    """Prepare each phase's store: once and copied (SQLite), or once per schema (PostgreSQL)."""
    if all(url.startswith("sqlite:///") for url in urls.values()):
        template = plan.out / "prepared.db"
        remove_sqlite(template)
        prepared = prepare_store(plan, data, f"sqlite:///{template}", smtp, progress)
        checkpoint_sqlite(template)
        found = {}
        for name, url in urls.items():
            shutil.copyfile(template, url.removeprefix("sqlite:///"))
            found[name] = Prepared(url, prepared.stripe_customers, prepared.warm_up_seconds,
                                   prepared.warm_up)
        remove_sqlite(template)
        return found
    return {name: prepare_store(plan, data, url, smtp, progress) for name, url in urls.items()}


def checkpoint_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def prepare_store(plan: Plan, data: Dataset, url: str, smtp: SmtpSettings,
                  progress: Progress) -> Prepared:
    clock = oncely.FrozenClock(plan.origin - DECLARED_BEFORE)
    app = build_app(url, usage_source=data.usage_url, clock=clock, enforce=True, smtp=smtp)
    try:
        seed.load_store(app, data.usage_path, progress)
        customers = keep_customers(app, plan.stripe_customers)
        declare_schedules(app)
        scale_timeouts(app, plan.speed)  # the notification jobs the recount enqueues
        clock.set(plan.origin - WARM_UP_BEFORE)
        progress("initial recount", 0, 1)
        started = time.perf_counter()
        result = warm_up(app)
        result["emails_sent_before_the_day"] = deliver_notifications(app)
        seconds = time.perf_counter() - started
        progress("initial recount", 1, 1)
        install_write_log(app)
    finally:
        app.close()
    return Prepared(url, customers, seconds, result)


def keep_customers(app: oncely.App, keep: int) -> int:
    with app.store.transaction() as conn:
        conn.execute(TRIM_CUSTOMERS.format(keep=int(keep)))
        row = conn.execute(COUNT_CUSTOMERS).fetchone()
    return int(row[0])


def warm_up(app: oncely.App) -> dict[str, Any]:
    """Run the free-tier job's full recount once, as a task of its own."""
    runtime = metering_of(app)

    def initial_recount(ctx: oncely.JobContext) -> dict[str, Any]:
        return run_free_tier(ctx, runtime, full=True)

    task = app.task(name=WARM_UP_TASK, queue="sim")(initial_recount)
    outcome = run_job(task, lease_ttl=24 * 3600.0)
    if outcome.state != oncely.JobState.SUCCEEDED:
        error = outcome.job.errors[-1].message if outcome.job.errors else outcome.state
        raise oncely.OncelyError(f"the initial recount of the free-tier job failed: {error}")
    return dict(outcome.result or {})


def deliver_notifications(app: oncely.App) -> int:
    """Send the emails the initial recount queued, as the deployment before the day would have:
    the day starts without a backlog. Returns how many notification jobs ran."""
    queue = metering_of(app).settings.notify_queue

    def waiting() -> int:
        return sum(row.count for row in app.store.job_counts() if row.queue == queue
                   and row.state not in FINISHED)

    pending = waiting()
    if pending:
        with worker_running(app, concurrency=4, queues=[queue], maintenance=False):
            wait_until(lambda: not waiting(), timeout=120, interval=0.02,
                       message="the initial recount's notifications were sent")
    return pending


def declare_schedules(app: oncely.App) -> None:
    """Register the billing schedules as the deployment that ran before the day did, so their
    slot of the day's first hour is in their history (and in the watchdog's expectations)."""
    if STRIPE_TASK not in app.tasks:
        install_stripe_usage_metering(app, metering_of(app).source)
    register_schedules(app)


def install_write_log(app: oncely.App) -> None:
    with app.store.transaction() as conn:
        for statement in WRITE_LOG[app.store.dialect]:
            conn.execute(statement)
