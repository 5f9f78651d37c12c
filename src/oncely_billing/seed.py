"""A realistic synthetic dataset, reproducible from a seed (``oncely metering seed``).

Built in bulk inside DuckDB with SQL (``sql/duckdb/seed.sql``), never row by row in Python:

* organizations with anchors on every day 1-31 (1-36 months old; 4% created inside the window),
  about 12% paid (active/trialing/past-due subscriptions, manual overrides, marketplace
  bundles), canceled subscriptions with Stripe customers and anchors, 1-4 members each
  (an owner, maybe an admin);
* 1-5 projects per organization, 6% deleted (half of them inside the window, after producing
  events that must not count);
* heavy-tailed usage: a quarter of the organizations idle, most tiny (log-normal, median ~80
  units a month), a few (``heavy_fraction``, eight times more among paid ones) between 30,000
  and 400,000 units a month, so some cross 50k/100k/200k/250k during the cycle; weekly rhythm,
  per-day noise and a per-org trend;
* ``days`` (default 32) days of traces, observations and scores up to ``end``, generated day
  by day, so events are stored in time order as an ingestion pipeline would store them.

The organizations, projects and members are then written to the job store in set-based batches.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import oncely
from oncely_billing import db, models
from oncely_billing.migrations import ensure_schema, run_script

Progress = Callable[[str, int, int], None]  # (step, done, total)
EVENT_TABLES = ("traces", "observations", "scores")


@dataclass(frozen=True)
class SeedReport:
    orgs: int
    projects: int
    deleted_projects: int
    paid_orgs: int
    anchor_days: int
    traces: int
    observations: int
    scores: int
    end: datetime
    usage_seconds: float
    store_seconds: float

    @property
    def events(self) -> int:
        return self.traces + self.observations + self.scores


def _connect(path: str | Path, read_only: bool = False) -> Any:
    import duckdb

    conn = duckdb.connect(str(path), read_only=read_only)
    conn.execute(db.q("duckdb", "session_setup"))
    return conn


def _script(conn: Any, name: str, params: dict[str, Any] | None = None) -> None:
    for statement in db.q("duckdb", name).split(";\n"):
        if statement.strip():
            conn.execute(statement, params if params and "$" in statement else None)


def _naive(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(tzinfo=None)


def _generate_window(conn: Any, lo: datetime, hi: datetime) -> None:
    conn.execute(db.q("duckdb", "seed_window"), {"lo": _naive(lo), "hi": _naive(hi)})
    for table in EVENT_TABLES:
        conn.execute(db.q("duckdb", f"seed_insert_{table}"))


def build_usage(
    path: str | Path, *, orgs: int, seed: int, end: datetime, days: int = 32,
    heavy_fraction: float = 0.002, progress: Progress | None = None,
) -> None:
    """Create the DuckDB usage file (events plus the seed's own tables)."""
    if orgs < 1 or days < 1:
        raise oncely.ConfigError("seed needs at least one organization and one day")
    report = progress or (lambda step, done, total: None)
    end = end.astimezone(UTC).replace(microsecond=0)
    conn = _connect(path)
    try:
        _script(conn, "schema")
        params = {"seed": seed, "orgs": orgs, "end": _naive(end), "days": days,
                  "heavy_fraction": heavy_fraction}
        _script(conn, "seed_setup", params)
        report("organizations", 0, 1)
        conn.execute(db.q("duckdb", "seed_orgs"))
        conn.execute(db.q("duckdb", "seed_projects"))
        report("organizations", 1, 1)
        start = end - timedelta(days=days)
        first = datetime(start.year, start.month, start.day, tzinfo=UTC)
        for index in range(days + 1):
            lo = max(start, first + timedelta(days=index))
            hi = min(end, first + timedelta(days=index + 1))
            if hi > lo:
                _generate_window(conn, lo, hi)
            report("events", index + 1, days + 1)
        conn.execute(db.q("duckdb", "checkpoint"))
    finally:
        conn.close()


def append_events(path: str | Path, start: datetime, end: datetime) -> int:
    """Generate the events of ``[start, end)`` (e.g. the next hour) for the seeded projects."""
    conn = _connect(path)
    try:
        before = conn.execute(db.q("duckdb", "events_count")).fetchone()[0]
        _generate_window(conn, start, end)
        after = conn.execute(db.q("duckdb", "events_count")).fetchone()[0]
    finally:
        conn.close()
    return int(after - before)


def load_store(app: oncely.App, path: str | Path, progress: Progress | None = None) -> None:
    """Write the seeded organizations, projects and members to the job store."""
    report = progress or (lambda step, done, total: None)
    ensure_schema(app)
    conn = _connect(path, read_only=True)
    try:
        steps = (("orgs_insert_batch", models.ORG_COLUMNS, "seed_orgs_rows"),
                 ("projects_insert_batch", models.PROJECT_COLUMNS, "seed_projects_rows"),
                 ("members_insert_batch", models.MEMBER_COLUMNS, "seed_members"))
        for number, (insert, columns, select) in enumerate(steps):
            report("job store", number, len(steps))
            rows = conn.execute(db.q("duckdb", select)).fetchall()
            models.insert_rows(app, insert, columns, rows)
        report("job store", len(steps), len(steps))
    finally:
        conn.close()


def summary(path: str | Path, end: datetime, usage_seconds: float = 0.0,
            store_seconds: float = 0.0) -> SeedReport:
    conn = _connect(path, read_only=True)
    try:
        row = conn.execute(db.q("duckdb", "seed_summary")).fetchone()
    finally:
        conn.close()
    orgs, projects, deleted, paid, anchor_days, traces, observations, scores = (
        int(value) for value in row)
    return SeedReport(orgs, projects, deleted, paid, anchor_days, traces, observations, scores,
                      end, usage_seconds, store_seconds)


def check_usage_path(usage_path: str | Path) -> Path:
    """The ``--usage`` path, or a ConfigError naming what is wrong with it (nothing touched)."""
    path = Path(usage_path)
    if path.is_dir():
        raise oncely.ConfigError(f"--usage {path} is a folder: give a file such as "
                                 f"{path / 'usage.duckdb'}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise oncely.ConfigError(f"--usage {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise oncely.ConfigError(f"--usage {path}: the folder {folder} is not writable")
    return path


def seed(
    app: oncely.App, usage_path: str | Path, *, orgs: int, seed: int = 1,
    end: datetime | None = None, days: int = 32, heavy_fraction: float = 0.002,
    replace: bool = False, progress: Progress | None = None,
) -> SeedReport:
    """Build the dataset: events into ``usage_path`` (DuckDB), the rest into the job store.

    Nothing is destroyed before everything was checked and built: the inputs are validated,
    the new usage file is built beside the old one under a temporary name, and the store's
    metering rows are deleted and rewritten in one transaction, inside which the new file
    takes the old one's name just before the commit. A failure anywhere leaves both as they
    were.
    """
    path = check_usage_path(usage_path)
    if orgs < 1 or days < 1:
        raise oncely.ConfigError("seed needs at least one organization and one day")
    ensure_schema(app)
    existing = models.count_organizations(app)
    if (path.exists() or existing) and not replace:
        what = f"{path} exists" if path.exists() else f"the store has {existing} organizations"
        raise oncely.ConfigError(f"refusing to seed: {what}; pass --replace to start over")
    end = end or app.clock.now()
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".seeding", dir=path.parent)
    os.close(fd)
    building = Path(name)
    building.unlink()  # DuckDB creates the file itself
    try:
        started = time.perf_counter()
        build_usage(building, orgs=orgs, seed=seed, end=end, days=days,
                    heavy_fraction=heavy_fraction, progress=progress)
        usage_seconds = time.perf_counter() - started
        started = time.perf_counter()
        _replace_store(app, building, path, clear=bool(existing), progress=progress)
    finally:
        building.unlink(missing_ok=True)
    return summary(path, end, usage_seconds, time.perf_counter() - started)


def _replace_store(app: oncely.App, building: Path, path: Path, *, clear: bool,
                   progress: Progress | None) -> None:
    """Swap the store's metering rows and the usage file for the new ones, all or nothing."""
    report = progress or (lambda step, done, total: None)
    dialect = db.sql_dialect(app)
    now = app.clock.now().timestamp()
    steps = (("orgs_insert_batch", models.ORG_COLUMNS, "seed_orgs_rows"),
             ("projects_insert_batch", models.PROJECT_COLUMNS, "seed_projects_rows"),
             ("members_insert_batch", models.MEMBER_COLUMNS, "seed_members"))
    source = _connect(building, read_only=True)
    try:
        with db.connection(app) as conn:
            if clear:
                run_script(conn, dialect, "metering_data_clear")
            for number, (insert, columns, select) in enumerate(steps):
                report("job store", number, len(steps))
                rows = source.execute(db.q("duckdb", select)).fetchall()
                for chunk in db.chunks(rows, models.BATCH):
                    db.run(conn, dialect, insert,
                           {**db.batch_params(dialect, columns, chunk), "now": now})
            source.close()
            os.replace(building, path)  # last step before the commit
        report("job store", len(steps), len(steps))
    finally:
        source.close()


def copy_events_to_store(app: oncely.App, usage_path: str | Path, batch: int = 5000) -> int:
    """Copy a DuckDB file's events into the job store's tables (the ``sql`` usage source)."""
    ensure_schema(app)
    columns = {
        "traces": ("id", "project_id", "timestamp", "name"),
        "observations": ("id", "trace_id", "project_id", "start_time", "type"),
        "scores": ("id", "trace_id", "project_id", "timestamp", "name", "value"),
    }
    conn = _connect(usage_path, read_only=True)
    total = 0
    try:
        for table, names in columns.items():
            rows = conn.execute(db.q("duckdb", f"events_for_copy_{table}")).fetchall()
            total += models.insert_rows(app, f"{table}_insert_batch", names, rows, batch)
    finally:
        conn.close()
    return total


def export_to_clickhouse(usage_path: str | Path, source: Any) -> None:
    """Load a DuckDB file's events into a ClickHouse usage source (server or chdb)."""
    with tempfile.TemporaryDirectory(prefix="oncely-seed-") as workdir:
        source.load_from_duckdb(usage_path, workdir)
