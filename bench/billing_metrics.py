"""What the billing families cost a scrape of the fleet /metrics, on stores of a realistic size.

    python bench/billing_metrics.py [--store sqlite,postgres] [--orgs 50000] [--outbox 200000]
        [--deliveries 1000000] [--scrapes 20] [--postgres-url URL]

Each store gets ``--orgs`` organizations (one in ten WARNING, one in fifty BLOCKED), an outbox of
``--outbox`` notifications (one in twenty pending, half of those failing) and ``--deliveries``
Stripe meter events over as many past hours as 5,000 billable orgs fill, written with set-based
SQL; then the billing collector is scraped ``--scrapes`` times. Prints the scrape time (p50, max,
in ms) per store, then the same as JSON. PostgreSQL gets a fresh schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from prometheus_client import generate_latest

from oncely import FrozenClock
from oncely_billing import DuckDBUsageSource, build_app, migrations, stripe_store
from oncely_billing.metrics import registry

BILLABLE = 5_000
NOW_MS = 1_774_000_000_000 // 3_600_000 * 3_600_000

FILL = {
    "sqlite": [
        """WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :orgs)
        INSERT INTO metering_organizations (id, name, created_at, updated_at, threshold_state)
        SELECT i, 'org' || i, 1735689600, 0,
               CASE WHEN i % 50 = 0 THEN 'BLOCKED' WHEN i % 10 = 0 THEN 'WARNING' END FROM s""",
        """WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < :outbox - 1)
        INSERT INTO metering_notification_outbox (org_id, cycle_start, threshold, kind, usage,
            included, block_at, reset_date, created_at, status, last_error)
        SELECT i % :orgs, date('2020-01-01', '+' || (i / :orgs) || ' months'), 50000,
               'usage_warning', 60000, 50000, 250000, '2030-01-01', 0,
               CASE WHEN i % 20 = 0 THEN 'pending' ELSE 'sent' END,
               CASE WHEN i % 40 = 0 THEN 'smtp down' END FROM s""",
        """WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s
                                   WHERE i < :deliveries - 1)
        INSERT INTO oncely_stripe_deliveries (identifier, hour_start_ms, org_id, event_name,
            customer_id, value, status, updated_at_ms)
        SELECT 'e:' || i, :now_ms - (i / :billable + 1) * 3600000, 'org' || (i % :billable),
               'tracing_events', 'cus', 1,
               CASE WHEN i % 1000 = 0 THEN 'failed' ELSE 'delivered' END, 0 FROM s""",
        """INSERT INTO oncely_stripe_watermark (name, hour_start_ms, updated_at_ms)
        VALUES ('usage', :now_ms - 3600000, 0)""",
    ],
    "postgres": [
        """INSERT INTO metering_organizations (id, name, created_at, updated_at, threshold_state)
        SELECT i, 'org' || i, '2025-01-01', now(),
               CASE WHEN i %% 50 = 0 THEN 'BLOCKED' WHEN i %% 10 = 0 THEN 'WARNING' END
        FROM generate_series(1, %(orgs)s) AS i""",
        """INSERT INTO metering_notification_outbox (org_id, cycle_start, threshold, kind, usage,
            included, block_at, reset_date, created_at, status, last_error)
        SELECT i %% %(orgs)s, date '2020-01-01' + (i / %(orgs)s) * interval '1 month', 50000,
               'usage_warning', 60000, 50000, 250000, '2030-01-01', now(),
               CASE WHEN i %% 20 = 0 THEN 'pending' ELSE 'sent' END,
               CASE WHEN i %% 40 = 0 THEN 'smtp down' END
        FROM generate_series(0, %(outbox)s - 1) AS i""",
        """INSERT INTO oncely_stripe_deliveries (identifier, hour_start_ms, org_id, event_name,
            customer_id, value, status, updated_at_ms)
        SELECT 'e:' || i, %(now_ms)s - (i / %(billable)s + 1) * 3600000,
               'org' || (i %% %(billable)s), 'tracing_events', 'cus', 1,
               CASE WHEN i %% 1000 = 0 THEN 'failed' ELSE 'delivered' END, 0
        FROM generate_series(0, %(deliveries)s - 1) AS i""",
        """INSERT INTO oncely_stripe_watermark (name, hour_start_ms, updated_at_ms)
        VALUES ('usage', %(now_ms)s - 3600000, 0)""",
        "ANALYZE",
    ],
}


def measure(url: str, args: argparse.Namespace) -> dict[str, object]:
    clock = FrozenClock(datetime.fromtimestamp(NOW_MS / 1000 + 2400, UTC))
    app = build_app(url, usage_source=DuckDBUsageSource("unused.duckdb"), clock=clock)
    migrations.ensure_schema(app)
    stripe_store.ensure_schema(app, NOW_MS)
    params = {"orgs": args.orgs, "outbox": args.outbox, "deliveries": args.deliveries,
              "billable": BILLABLE, "now_ms": NOW_MS}
    started = time.perf_counter()
    with app.transaction() as tx:
        for statement in FILL["postgres" if app.dialect.startswith("postgres") else "sqlite"]:
            tx.connection.execute(statement, None if statement == "ANALYZE" else params)
    filled = time.perf_counter() - started
    found = registry(app)
    took = []
    for _ in range(args.scrapes):
        mark = time.perf_counter()
        text = generate_latest(found)
        took.append((time.perf_counter() - mark) * 1000)
    app.close()
    return {"store": app.dialect, "orgs": args.orgs, "outbox": args.outbox,
            "deliveries": args.deliveries, "fill_s": round(filled, 1), "scrapes": args.scrapes,
            "p50_ms": round(statistics.median(took), 2), "max_ms": round(max(took), 2),
            "families": text.decode().count("# TYPE")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="sqlite,postgres")
    parser.add_argument("--orgs", type=int, default=50_000)
    parser.add_argument("--outbox", type=int, default=200_000)
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    rows = []
    for store in args.store.split(","):
        if store == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(measure(f"sqlite:///{tmp}/billing.db", args))
        else:
            import psycopg

            schema = f"oncely_bench_{uuid.uuid4().hex[:12]}"
            try:
                rows.append(measure(f"{args.postgres_url}?schema={schema}", args))
            finally:
                with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    print(f"{'store':<10}{'orgs':>8}{'outbox':>9}{'deliveries':>12}{'scrape p50 ms':>15}"
          f"{'max ms':>9}")
    for row in rows:
        print(f"{row['store']:<10}{row['orgs']:>8}{row['outbox']:>9}{row['deliveries']:>12}"
              f"{row['p50_ms']:>15}{row['max_ms']:>9}")
    print(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
