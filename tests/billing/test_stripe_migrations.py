"""The Stripe metering tables are migrations 0003/0004 of the metering schema: a database whose
tables were made by the old versioning (``oncely_stripe_migrations``) is adopted with its rows,
and ``oncely metering migrate --to/--status`` moves them down and up with rows, on both stores."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

import oncely
from oncely_billing import migrations
from oncely_billing.cli import metering

# What oncely_billing.stripe_store created before the tables joined the numbered migrations
# (its only version, "stripe_schema_v1", recorded in oncely_stripe_migrations).
OLD_VERSIONING = """
CREATE TABLE oncely_stripe_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL);
INSERT INTO oncely_stripe_migrations VALUES (1, 'stripe_schema_v1', 1773140700000);
CREATE TABLE oncely_stripe_watermark (name TEXT PRIMARY KEY, hour_start_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL, job_id BIGINT, fence BIGINT);
CREATE TABLE oncely_stripe_deliveries (identifier TEXT PRIMARY KEY, hour_start_ms BIGINT NOT NULL,
    org_id TEXT NOT NULL, event_name TEXT NOT NULL, customer_id TEXT NOT NULL,
    value BIGINT NOT NULL, status TEXT NOT NULL, code TEXT, message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, job_id BIGINT, updated_at_ms BIGINT NOT NULL);
CREATE INDEX oncely_stripe_deliveries_hour ON oncely_stripe_deliveries (hour_start_ms);
CREATE INDEX oncely_stripe_deliveries_status ON oncely_stripe_deliveries (status, hour_start_ms);
CREATE TABLE oncely_stripe_hours (hour_start_ms BIGINT PRIMARY KEY, status TEXT NOT NULL,
    events INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, job_id BIGINT,
    finished_at_ms BIGINT NOT NULL, note TEXT);
CREATE TABLE oncely_stripe_runs (job_id BIGINT NOT NULL, attempt INTEGER NOT NULL,
    started_at_ms BIGINT NOT NULL, finished_at_ms BIGINT, outcome TEXT NOT NULL,
    hours INTEGER NOT NULL DEFAULT 0, events INTEGER NOT NULL DEFAULT 0, note TEXT,
    PRIMARY KEY (job_id, attempt))
"""
HOUR_MS = 1773136800000  # 2026-03-10 10:00 UTC
ROWS = [
    "INSERT INTO oncely_stripe_watermark VALUES ('usage', 1773136800000, 1773140700000, 7, 3)",
    "INSERT INTO oncely_stripe_deliveries (identifier, hour_start_ms, org_id, event_name, "
    "customer_id, value, status, attempts, job_id, updated_at_ms) VALUES "
    "('tracing_events:org1:1773136800000', 1773136800000, 'org1', 'tracing_events', 'cus_1', "
    "42, 'delivered', 1, 7, 1773140700000)",
    "INSERT INTO oncely_stripe_hours VALUES (1773136800000, 'reported', 1, 1, 0, 0, 7, "
    "1773140700000, NULL)",
    "INSERT INTO oncely_stripe_runs VALUES (7, 1, 1773140700000, 1773140760000, 'ok', 1, 1, "
    "NULL)",
]


def invoke(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(metering, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = json.loads(result.output)
    return found


def tables(app: oncely.App) -> set[str]:
    with app.transaction() as tx:
        if app.dialect == "sqlite":
            rows = tx.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        else:
            rows = tx.execute("SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = current_schema()").fetchall()
    return {str(row[0]) for row in rows if str(row[0]).startswith("oncely_stripe")}


def stripe_rows(app: oncely.App) -> list[tuple[Any, ...]]:
    with app.transaction() as tx:
        return [
            tuple(tx.execute("SELECT hour_start_ms, job_id FROM oncely_stripe_watermark")
                  .fetchone()),
            tuple(tx.execute("SELECT identifier, value, status FROM oncely_stripe_deliveries "
                             "ORDER BY identifier").fetchall()),
            tuple(tx.execute("SELECT hour_start_ms, status FROM oncely_stripe_hours")
                  .fetchall()),
            tuple(tx.execute("SELECT job_id, outcome FROM oncely_stripe_runs").fetchall()),
        ]


def old_versions(app: oncely.App) -> list[int]:
    with app.transaction() as tx:
        return [int(r[0]) for r in tx.execute("SELECT version FROM oncely_stripe_migrations")]


def test_tables_of_the_old_versioning_are_adopted_with_their_rows(store_url: str) -> None:
    app = oncely.App(store_url)
    try:
        migrations.migrate(app, to=2)  # the release before: metering at 2, Stripe on its own
        with app.transaction() as tx:
            for statement in [s for s in OLD_VERSIONING.split(";") if s.strip()] + ROWS:
                tx.execute(statement)
        before = stripe_rows(app)
    finally:
        app.close()

    base = ["--database-url", store_url, "--json"]
    assert invoke(*base, "migrate")["applied"] == ["0003_stripe", "0004_stripe_corrections"]
    status = invoke(*base, "migrate", "--status")
    assert status["version"] == 4 and status["0003_stripe"] == "applied"

    app = oncely.App(store_url)
    try:
        assert stripe_rows(app) == before  # adopted, nothing rebuilt or lost
        assert "oncely_stripe_migrations" not in tables(app)  # one ledger from here on
        from oncely_billing import stripe_cli

        report = stripe_cli.status_report(app)
        assert report["watermark"] == "2026-03-10T10:00:00+00:00"
        assert report["last_run"]["job_id"] == 7
    finally:
        app.close()


def test_stripe_tables_go_down_and_up_with_rows(store_url: str) -> None:
    base = ["--database-url", store_url, "--json"]
    invoke(*base, "migrate")
    app = oncely.App(store_url)
    try:
        with app.transaction() as tx:
            for statement in ROWS:
                tx.execute(statement)
            tx.execute(  # a late-usage correction of that hour
                "INSERT INTO oncely_stripe_deliveries (identifier, hour_start_ms, org_id, "
                "event_name, customer_id, value, status, attempts, job_id, updated_at_ms, "
                "correction) VALUES ('tracing_events:org1:1773136800000:c1', 1773136800000, "
                "'org1', 'tracing_events', 'cus_1', 5, 'delivered', 1, 8, 1773226800000, 1)")
        before = stripe_rows(app)
        assert len(before[1]) == 2
    finally:
        app.close()

    down = invoke(*base, "migrate", "--to", "2")
    assert down["reverted"] == ["0004_stripe_corrections", "0003_stripe"]
    assert invoke(*base, "migrate", "--status")["0003_stripe"] == "pending"
    app = oncely.App(store_url)
    try:
        # Handed back to the old versioning, rows kept: version 2 code finds them as it left
        # them (its ensure_schema sees version 1 applied and creates nothing).
        assert stripe_rows(app) == before
        assert old_versions(app) == [1]
        assert "oncely_stripe_reconciliations" not in tables(app)
    finally:
        app.close()

    assert invoke(*base, "migrate", "--to", "4")["applied"] == ["0003_stripe",
                                                              "0004_stripe_corrections"]
    app = oncely.App(store_url)
    try:
        assert stripe_rows(app) == before
        assert "oncely_stripe_migrations" not in tables(app)
        from oncely_billing import stripe_store

        queries = stripe_store.ensure_schema(app)
        with app.transaction() as tx:
            # the correction is still counted as one (by identifier: its number was dropped)
            rows = queries.all(tx.connection, "stripe_sent_by_hour_all", start_ms=HOUR_MS,
                               end_ms=HOUR_MS + 3_600_000)
        assert [tuple(int(v) if not isinstance(v, str) else v for v in r) for r in rows] == [
            ("org1", "tracing_events", HOUR_MS, 47, 1)]
    finally:
        app.close()

    assert invoke(*base, "migrate", "--to", "0")["to_version"] == 0
    app = oncely.App(store_url)
    try:
        assert tables(app) == set()  # removing the metering schema removes the Stripe tables
    finally:
        app.close()
