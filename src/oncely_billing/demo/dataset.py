"""The demo's data: one DuckDB usage dataset, and a fresh, identically prepared store per phase.

The dataset is the seed's (:func:`oncely_billing.seed.build_usage`) plus a few **surges**
(:func:`add_surges`): free organizations with little usage that import a burst of traces during
the simulated day — 60,000, which crosses the 50,000 warning, and later 200,000, which crosses
the 250,000 block — so both phases have threshold emails to send, at known times, and the
report can count the ones sent more than once.

Preparing a store (:func:`prepare_store`):

1. the engine and metering schemas, and the seeded organizations, projects and members
   (:func:`oncely_billing.seed.load_store`);
2. Stripe customer ids kept for the first :data:`.plan.STRIPE_CUSTOMERS` organizations
   that have one, cleared for the others, so the local stub keeps up at demo speed;
3. what the deployment that ran before the day left behind (:mod:`.before`): the
   schedules, the free-tier rollup, the emails it sent, the last hour billed to Stripe;
4. a write log: a trigger appends ``(org_id, updated_at)`` to ``sim_org_writes`` for every row
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import oncely
from oncely_billing import build_app, db, seed
from oncely_billing.demo import before
from oncely_billing.demo.plan import HEAVY_FRACTION, Plan
from oncely_billing.settings import SmtpSettings

Progress = Callable[[str, int, int], None]

SURGES = (60_000, 200_000)  # traces per burst: past the warning, then past the block
SURGE_FIRST, SURGE_SPREAD, SURGE_GAP = 0.1, 0.4, 0.35  # of the day, before its last slot
SURGE_ORGS = """SELECT o.org_id, min(p.project_id) FROM seed_orgs o
JOIN seed_projects p ON p.org_id = o.org_id AND p.deleted_at IS NULL
WHERE NOT o.paid AND o.plan = 'free' AND o.monthly_units < 1000
  AND o.created_at < $before AND day(o.created_at) <= 27
  AND NOT list_contains($days, day(o.created_at))
GROUP BY o.org_id ORDER BY hash($seed, o.org_id) LIMIT $count"""
SURGE_INSERT = """INSERT INTO traces
SELECT (hash($seed, $project, $at, k) >> 1)::BIGINT, $project,
       $at::TIMESTAMP + to_microseconds(k * 1000), 'import'
FROM range($events) r(k)"""

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
    surges: tuple[dict[str, Any], ...] = ()

    @property
    def usage_url(self) -> str:
        return f"duckdb:///{self.usage_path}"  # an absolute path: duckdb:////dir/usage.duckdb


@dataclass(frozen=True)
class Prepared:
    url: str
    stripe_customers: int
    before_seconds: float
    before: dict[str, Any]


def build_usage(plan: Plan, progress: Progress) -> Dataset:
    """Generate the usage events (DuckDB) for ``plan.orgs`` organizations."""
    path = plan.out / "usage.duckdb"
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    seed.build_usage(path, orgs=plan.orgs, seed=plan.seed, end=plan.usage_end,
                     heavy_fraction=HEAVY_FRACTION, progress=progress)
    surges = add_surges(plan, path)
    found = seed.summary(path, plan.usage_end)
    return Dataset(path, found.orgs, found.projects, found.paid_orgs, found.events,
                   plan.usage_end, time.perf_counter() - started, tuple(surges))


def surge_orgs(orgs: int) -> int:
    return min(8, max(3, orgs // 500))


def add_surges(plan: Plan, path: Path) -> list[dict[str, Any]]:
    """Give a few idle free organizations their bursts of traces (see the module docstring);
    returns what was added. Their anchor days stay clear of the day, so no cycle resets under
    them."""
    import duckdb

    days = sorted({(plan.origin + timedelta(days=n)).day
                   for n in range(int(plan.sim_seconds // 86400) + 2)})
    count = surge_orgs(plan.orgs)
    conn = duckdb.connect(str(path))
    added = []
    try:
        chosen = conn.execute(SURGE_ORGS, {
            "before": naive(plan.origin - timedelta(days=2)), "days": days, "seed": plan.seed,
            "count": count}).fetchall()
        for index, (org_id, project_id) in enumerate(chosen):
            first = SURGE_FIRST + SURGE_SPREAD * index / count
            for number, events in enumerate(SURGES):
                at = naive(plan.at(first + SURGE_GAP * number))
                conn.execute(SURGE_INSERT, {"seed": plan.seed, "project": int(project_id),
                                            "at": at, "events": events})
                added.append({"org_id": int(org_id), "at": at.isoformat(), "traces": events})
        conn.execute("CHECKPOINT")
    finally:
        conn.close()
    return added


def naive(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(tzinfo=None)


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
            found[name] = Prepared(url, prepared.stripe_customers, prepared.before_seconds,
                                   prepared.before)
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
    clock = oncely.FrozenClock(plan.origin - before.DECLARED_BEFORE)
    app = build_app(url, usage_source=data.usage_url, clock=clock, enforce=True, smtp=smtp)
    try:
        seed.load_store(app, data.usage_path, progress)
        customers = keep_customers(app, plan.stripe_customers)
        progress("the deployment before the day", 0, 1)
        started = time.perf_counter()
        result = before.run(plan, app, clock)
        seconds = time.perf_counter() - started
        progress("the deployment before the day", 1, 1)
        install_write_log(app)
    finally:
        app.close()
    return Prepared(url, customers, seconds, result)


def keep_customers(app: oncely.App, keep: int) -> int:
    with db.connection(app) as conn:
        conn.execute(TRIM_CUSTOMERS.format(keep=int(keep)))
        row = conn.execute(COUNT_CUSTOMERS).fetchone()
    return int(row[0])


def install_write_log(app: oncely.App) -> None:
    with db.connection(app) as conn:
        for statement in WRITE_LOG[app.dialect]:
            conn.execute(statement)
