"""The tables of Stripe usage metering and every query on them.

Five tables on the job store (SQLite or PostgreSQL; times are epoch milliseconds in ``BIGINT`` so
one schema serves both dialects):

* ``oncely_stripe_watermark`` — one row per metering stream (``usage``): ``hour_start_ms`` of the
  last hour whose every org was delivered or recorded failed. Written only inside the job's fenced
  transaction, and as a compare-and-set from the previous hour, so it moves one hour at a time.
* ``oncely_stripe_deliveries`` — one row per meter event (primary key: its Stripe identifier):
  ``delivered`` | ``duplicate`` (Stripe already had it) | ``failed`` (a 4xx, with Stripe's code) |
  ``retry`` (a failure a human reset) | ``lost`` (too old for Stripe to take) | ``sending``
  (written down before the call, no answer saved yet). Resuming an hour skips every identifier
  answered here and sends the ``sending`` ones again *with the value on record*, so a crash
  between two orgs, or between Stripe's answer and its record, sends nothing twice and never a
  different value under an identifier Stripe may hold.
* ``oncely_stripe_hours`` — one row per finished hour: ``reported`` with its counts, or ``lost``.
* ``oncely_stripe_runs`` — one row per job attempt: start, end, outcome (``ok``, ``behind``,
  ``stripe_unavailable``, ``fence_lost``, ``error``), hours and events — "last run" in the CLI.
* ``oncely_stripe_reconciliations`` — one row per reconciliation attempt: its window, what it
  found (late, past Stripe's window, over-billed) and sent (:mod:`oncely_billing.stripe_reconcile`).

A late-usage correction is a row of ``oncely_stripe_deliveries`` like the hour's own event, with
``correction`` = 1, 2, ... (0 for the hour's own event) and the status ``sending`` until its
answer is saved. The tables are created by the metering schema's migrations ``0003_stripe`` and
``0004_stripe_corrections`` (:mod:`oncely_billing.migrations`); :func:`ensure_schema` applies
them once per process. The SQL is in ``sql/<dialect>/stripe.sql`` (named blocks, loaded by
:mod:`oncely_billing.db`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import oncely
from oncely_billing import db, migrations
from oncely_billing.stripe_client import MeterEvent, SendResult

STREAM = "usage"


@dataclass(frozen=True)
class DeliveryRow:
    identifier: str
    hour_start_ms: int
    org_id: str
    event_name: str
    customer_id: str
    value: int
    status: str
    code: str | None
    message: str | None
    attempts: int
    job_id: int | None
    updated_at_ms: int
    correction: int = 0  # 0: the hour's own event; 1, 2, ...: late-usage corrections


def sending_row(event: MeterEvent, job_id: int, now_ms: int) -> DeliveryRow:
    """The record of an event about to be sent."""
    return DeliveryRow(event.identifier, event.hour_start_ms, event.org_id, event.event_name,
                       event.customer_id, event.value, "sending", None, None, 0, job_id, now_ms,
                       event.correction)


def delivery_row(result: SendResult, job_id: int, now_ms: int,
                 status: str | None = None) -> DeliveryRow:
    """The record of one send (``status`` overrides the outcome, e.g. ``lost``)."""
    event = result.event
    return DeliveryRow(
        event.identifier, event.hour_start_ms, event.org_id, event.event_name, event.customer_id,
        event.value, status or result.outcome.value, result.code, result.message,
        result.attempts, job_id, now_ms, event.correction)


class Queries:
    """Every statement on the Stripe metering tables, on a job-store connection."""

    def __init__(self, dialect: str) -> None:
        self.dialect = "postgres" if dialect.startswith("postgres") else "sqlite"

    def one(self, conn: Any, query: str, /, **params: Any) -> tuple[Any, ...] | None:
        return db.fetch_one(conn, self.dialect, query, params)

    def all(self, conn: Any, query: str, /, **params: Any) -> list[tuple[Any, ...]]:
        return db.fetch_all(conn, self.dialect, query, params)

    def run(self, conn: Any, query: str, /, **params: Any) -> int:
        return int(db.run(conn, self.dialect, query, params).rowcount)

    # watermark ---------------------------------------------------------------------------
    def watermark(self, conn: Any) -> int | None:
        row = self.one(conn, "stripe_watermark_get", stream=STREAM)
        return None if row is None else int(row[0])

    def advance_watermark(self, conn: Any, expected: int | None, new: int, now_ms: int,
                          job_id: int, fence: int) -> bool:
        """Compare-and-set; False when the watermark is not where this run found it."""
        params = {"stream": STREAM, "new_ms": new, "now_ms": now_ms, "job_id": job_id,
                  "fence": fence}
        if expected is None:
            return self.run(conn, "stripe_watermark_insert", **params) == 1
        return self.run(conn, "stripe_watermark_advance", expected_ms=expected, **params) == 1

    # deliveries --------------------------------------------------------------------------
    def hour_records(self, conn: Any, hour_start_ms: int) -> list[tuple[Any, ...]]:
        """(identifier, status, org_id, event_name, customer_id, value, correction) of every
        event of the hour on record, but those a human reset."""
        return self.all(conn, "stripe_deliveries_of_hour", hour_ms=hour_start_ms)

    def write_down(self, conn: Any, rows: Sequence[DeliveryRow]) -> None:
        """Record events as ``sending`` before they are sent (an identifier on record already
        keeps its row and value)."""
        if rows:
            conn.cursor().executemany(db.q(self.dialect, "stripe_delivery_write_down"),
                                      [asdict(row) for row in rows])

    def record_deliveries(self, conn: Any, rows: Sequence[DeliveryRow]) -> None:
        if rows:
            conn.cursor().executemany(db.q(self.dialect, "stripe_delivery_upsert"),
                                      [asdict(row) for row in rows])

    def hour_counts(self, conn: Any, hour_start_ms: int) -> dict[str, int]:
        rows = self.all(conn, "stripe_hour_counts", hour_ms=hour_start_ms)
        return {str(row[0]): int(row[1]) for row in rows}

    def record_hour(self, conn: Any, hour_start_ms: int, status: str, counts: dict[str, int],
                    job_id: int, now_ms: int, note: str | None = None) -> None:
        delivered, duplicates = counts.get("delivered", 0), counts.get("duplicate", 0)
        failed = counts.get("failed", 0)
        self.run(conn, "stripe_hour_record", hour_ms=hour_start_ms, status=status,
                 events=delivered + duplicates + failed, delivered=delivered,
                 duplicates=duplicates, failed=failed, job_id=job_id, now_ms=now_ms, note=note)

    def retry_due(self, conn: Any, limit: int) -> list[tuple[Any, ...]]:
        return self.all(conn, "stripe_retry_due", limit=limit)

    def reset_failures(self, conn: Any, now_ms: int, code: str | None, org_id: str | None) -> int:
        return self.run(conn, "stripe_failures_reset", now_ms=now_ms, code=code, org_id=org_id)

    # runs --------------------------------------------------------------------------------
    def run_started(self, conn: Any, job_id: int, attempt: int, now_ms: int) -> None:
        self.run(conn, "stripe_run_start", job_id=job_id, attempt=attempt, now_ms=now_ms)

    def run_finished(self, conn: Any, job_id: int, attempt: int, now_ms: int, outcome: str,
                     hours: int, events: int, note: str | None) -> None:
        self.run(conn, "stripe_run_finish", now_ms=now_ms, outcome=outcome, hours=hours,
                 events=events, note=note, job_id=job_id, attempt=attempt)


def ensure_schema(app: oncely.App, now_ms: int = 0) -> Queries:
    """Bring the metering schema (the Stripe tables with it) up to date, once per process and
    store; returns the :class:`Queries` for the store's dialect. ``now_ms`` is not used any more
    (kept for callers)."""
    del now_ms
    migrations.ensure_schema(app)
    return Queries(app.dialect)
