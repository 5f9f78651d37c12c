"""The metering tables go down and up again with ``oncely metering migrate --to/--status``, with
rows in them, on both stores; the engine's schema is left alone by a metering rollback."""

from __future__ import annotations

import json

from click.testing import CliRunner

import oncely
from oncely_billing.cli import metering


def invoke(*args: str) -> dict:
    result = CliRunner().invoke(metering, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def count_orgs(url: str) -> int:
    app = oncely.App(url)
    try:
        with app.transaction() as tx:
            return int(tx.execute("SELECT COUNT(*) FROM metering_organizations").fetchone()[0])
    finally:
        app.close()


def test_metering_tables_go_down_and_up_with_rows(store_url: str) -> None:
    base = ["--database-url", store_url, "--json"]
    labels = invoke(*base, "migrate")["applied"]
    assert labels[0] == "0001_initial"
    app = oncely.App(store_url)
    try:
        with app.transaction() as tx:
            tx.execute("INSERT INTO metering_organizations (id, name, created_at, updated_at) "
                       "VALUES (%s, %s, %s, %s)", (1, "acme", *_instants(app.dialect)))
        engine_version = app.migration_status()[0]
    finally:
        app.close()
    assert count_orgs(store_url) == 1
    status = invoke(*base, "migrate", "--status")
    assert status["version"] == len(labels) and status["0001_initial"] == "applied"
    down = invoke(*base, "migrate", "--to", "0")
    assert down["reverted"] == labels[::-1] and down["to_version"] == 0
    assert invoke(*base, "migrate", "--status")["0001_initial"] == "pending"
    app = oncely.App(store_url, auto_migrate=False)
    try:
        assert app.migration_status()[0] == engine_version  # the engine's schema is untouched
    finally:
        app.close()
    assert invoke(*base, "migrate")["applied"] == labels
    assert count_orgs(store_url) == 0


def _instants(dialect: str) -> tuple[object, object]:
    if dialect == "sqlite":
        return 0.0, 0.0
    from datetime import UTC, datetime

    now = datetime(2026, 3, 2, tzinfo=UTC)
    return now, now
