"""The synthetic dataset (reproducible, realistic) and the usage sources (the same answers from
DuckDB, ClickHouse SQL on chdb and the job store's tables); the job on seeded data matches a
recount straight from the raw events."""

from __future__ import annotations

import hashlib
import tempfile
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

import oncely
from oncely.testing import FrozenClock
from oncely_billing import (
    DuckDBUsageSource,
    SQLUsageSource,
    UsageSourceError,
    build_app,
    metering_of,
    models,
    seed,
    usage_source_from_url,
)
from oncely_billing.cycle import cycle_for_day
from oncely_billing.usage_clickhouse import ClickHouseUsageSource

from .conftest import NOW, run_thresholds, small_settings

ORGS, SEED = 120, 11


def fingerprint(path: Path) -> str:
    conn = duckdb.connect(str(path), read_only=True)
    digest = hashlib.sha256()
    for table in ("seed_orgs", "seed_projects", "traces", "observations", "scores"):
        digest.update(repr(conn.execute(f"SELECT count(*), sum(hash(COLUMNS(*))) FROM {table}")
                           .fetchall()).encode())
    conn.close()
    return digest.hexdigest()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 days of a small population (no heavy organizations: SMALL limits make crossings)."""
    path = tmp_path_factory.mktemp("seed") / "usage.duckdb"
    seed.build_usage(path, orgs=ORGS, seed=SEED, end=NOW, days=32, heavy_fraction=0.0)
    return path


def test_the_dataset_is_reproducible_and_realistic(seeded: Path, tmp_path: Path) -> None:
    builds = {}
    for name, seed_value in (("a", 5), ("b", 5), ("c", 6)):
        builds[name] = tmp_path / f"{name}.duckdb"
        seed.build_usage(builds[name], orgs=40, seed=seed_value, end=NOW, days=2,
                         heavy_fraction=0.05)
    assert fingerprint(builds["a"]) == fingerprint(builds["b"])
    assert fingerprint(builds["a"]) != fingerprint(builds["c"])

    report = seed.summary(seeded, NOW)
    assert report.orgs == ORGS and report.anchor_days == 31
    assert report.paid_orgs > 0 and report.deleted_projects > 0
    assert report.traces and report.observations > report.traces > report.scores
    conn = duckdb.connect(str(seeded), read_only=True)
    first, last = conn.execute("SELECT min(timestamp), max(timestamp) FROM traces").fetchone()
    conn.close()
    assert last < NOW.replace(tzinfo=None) <= first + timedelta(days=32)


def test_usage_is_heavy_tailed() -> None:
    from oncely_billing import db

    conn = duckdb.connect()
    seed._script(conn, "seed_setup", {"seed": 1, "orgs": 50_000, "end": NOW.replace(tzinfo=None),
                                      "days": 32, "heavy_fraction": 0.002})
    conn.execute(db.q("duckdb", "seed_orgs"))
    quantiles = conn.execute("SELECT quantile_cont(monthly_units, [0.25, 0.5, 0.99]), "
                             "count(*) FILTER (monthly_units >= 250000), "
                             "count(*) FILTER (monthly_units >= 50000), "
                             "count(*) FILTER (paid) FROM seed_orgs").fetchone()
    conn.close()
    (idle, median, p99), blocked, warned, paid = quantiles
    assert idle == 0 and median < 200 and p99 < 20_000  # most organizations are tiny
    assert 5 <= blocked < warned < 1_000  # some cross every threshold
    assert 4_000 < paid < 8_000


def raw_cycle_usage(path: Path, app: oncely.App, now: datetime) -> dict[int, int]:
    """Units per organization in its current cycle, recounted from the raw events."""
    conn = duckdb.connect(str(path), read_only=True)
    live = dict(conn.execute(
        "SELECT project_id, org_id FROM seed_projects WHERE deleted_at IS NULL").fetchall())
    counts = conn.execute("""
        SELECT project_id, CAST(ts AS DATE), count(*) FROM (
            SELECT project_id, timestamp AS ts FROM traces UNION ALL
            SELECT project_id, start_time FROM observations UNION ALL
            SELECT project_id, timestamp FROM scores) WHERE ts < $now GROUP BY ALL""",
        {"now": now.replace(tzinfo=None)}).fetchall()
    conn.close()
    usage: dict[int, int] = defaultdict(int)
    for project, day, units in counts:
        if project in live:
            org = live[project]
            if day >= cycle_for_day(models.org_status(app, org).anchor_day, now.date()).start:
                usage[org] += units
    return usage


def test_the_job_on_seeded_data_matches_a_raw_recount(seeded: Path, tmp_path: Path) -> None:
    clock = FrozenClock(NOW)
    app = build_app(f"sqlite:///{tmp_path / 'o.db'}", usage_source=DuckDBUsageSource(seeded),
                    clock=clock, settings=small_settings())
    seed.load_store(app, seeded)
    first = run_thresholds(app)
    assert first["mode"] == "full" and first["notifications"] > 0 and first["blocked"] > 0

    def check() -> None:
        expected = raw_cycle_usage(seeded, app, clock.now())
        for org_id in range(1, ORGS + 1):
            status = models.org_status(app, org_id)
            if not status.paid:
                assert status.cycle_usage == expected.get(org_id, 0), org_id

    check()
    # an hour later, with an hour of new events: the incremental run agrees with the recount
    later = NOW + timedelta(hours=1)
    added = seed.append_events(seeded, NOW, later)
    clock.set(later)
    incremental = run_thresholds(app)
    assert added > 0 and incremental["mode"] == "incremental"
    assert 0 < incremental["org_rows_written"] <= incremental["usage_changed"] + incremental[
        "blocked"]
    check()
    app.close()


def sorted_counts(source: object, start: datetime, end: datetime, granularity: str) -> list:
    counts = source.usage_by_project(start, end, granularity)  # type: ignore[attr-defined]
    rows = zip(counts.project_id.tolist(), counts.bucket.tolist(), counts.traces.tolist(),
               counts.observations.tolist(), counts.scores.tolist(), strict=True)
    return sorted(rows)


def test_every_source_gives_the_same_counts(seeded: Path, tmp_path: Path) -> None:
    # a slice of the seed, small enough to copy into the job store quickly
    small = tmp_path / "slice.duckdb"
    conn = duckdb.connect(str(small))
    conn.execute(f"ATTACH '{seeded}' AS src (READ_ONLY)")
    for table in ("traces", "observations", "scores"):
        conn.execute(f"CREATE TABLE {table} AS SELECT * FROM src.{table} "
                     f"WHERE project_id % 10 = 0 AND project_id < 400")
    conn.close()
    app = build_app(f"sqlite:///{tmp_path / 'o.db'}", usage_source="sql",
                    clock=FrozenClock(NOW), settings=small_settings())
    seed.copy_events_to_store(app, small)
    chdb_source = ClickHouseUsageSource.chdb(tmp_path / "ch")
    try:
        seed.export_to_clickhouse(small, chdb_source)
        sources = [DuckDBUsageSource(small), chdb_source, SQLUsageSource(app)]
        start, end = NOW - timedelta(days=3, hours=5), NOW - timedelta(hours=1)
        for granularity in ("day", "hour"):
            answers = [sorted_counts(s, start, end, granularity) for s in sources]
            assert answers[0] and answers[0] == answers[1] == answers[2], granularity
        assert all(s.queries == 2 for s in sources)
    finally:
        chdb_source.close()
        app.close()


def test_a_broken_query_is_not_retried(tmp_path: Path) -> None:
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    source = DuckDBUsageSource(empty, attempts=4, sleep=lambda s: None)
    with pytest.raises(UsageSourceError, match="traces"):
        source.usage_by_project(NOW - timedelta(days=1), NOW)
    assert source.queries == 1 and source.breaker.state == "closed"


def test_usage_urls() -> None:
    assert isinstance(usage_source_from_url("duckdb:///u.duckdb"), DuckDBUsageSource)
    assert usage_source_from_url("duckdb:////abs/u.duckdb").path == "/abs/u.duckdb"  # type: ignore[attr-defined]
    assert isinstance(usage_source_from_url("events.duckdb"), DuckDBUsageSource)
    with pytest.raises(oncely.ConfigError, match="not supported"):
        usage_source_from_url("mysql://x")
    app = build_app("sqlite://:memory:", usage_source="sql")
    assert isinstance(metering_of(app).source, SQLUsageSource)
    app.close()


class ChdbBackedClient:
    """A clickhouse-connect client stand-in that answers from chdb (no server here)."""

    def __init__(self, path: Path) -> None:
        from chdb import session

        self.session = session.Session(str(path))
        self.settings_seen: list[dict] = []

    def query(self, sql: str, parameters: dict, settings: dict) -> object:
        self.settings_seen.append(settings)
        text = str(self.session.query(sql, "TabSeparated", params=parameters))
        rows = [list(map(int, line.split("\t"))) for line in text.splitlines() if line]
        return type("Result", (), {"result_columns": [list(c) for c in zip(*rows, strict=True)]})

    def command(self, sql: str) -> None:
        self.session.query(sql)

    def raw_insert(self, table: str, insert_block: bytes, fmt: str) -> None:
        staged = Path(tempfile.mkdtemp()) / "block.parquet"
        staged.write_bytes(insert_block)
        self.session.query(f"INSERT INTO {table} SELECT * FROM file('{staged}', {fmt})")

    def close(self) -> None:
        self.session.close()


def test_the_server_runner_speaks_clickhouse_connect(seeded: Path, tmp_path: Path) -> None:
    from oncely_billing.usage_clickhouse import ServerRunner

    client = ChdbBackedClient(tmp_path / "server")
    source = ClickHouseUsageSource(ServerRunner(client, name="clickhouse://test"), timeout=30)
    try:
        seed.export_to_clickhouse(seeded, source)
        start, end = NOW - timedelta(days=2), NOW
        server = sorted_counts(source, start, end, "day")
        assert server == sorted_counts(DuckDBUsageSource(seeded), start, end, "day")
        assert client.settings_seen == [{"max_execution_time": 30}]
    finally:
        source.close()
