-- Stripe usage metering (oncely_billing.meter): tables and queries, PostgreSQL.
-- These tables are versioned by oncely_stripe_migrations (see oncely_billing.stripe_store), not
-- by the numbered migrations of this folder. Instants are epoch milliseconds (INTEGER).

-- name: stripe_migrations_lock
-- Concurrent CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL: serialise them.
SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.oncely_stripe_migrations'))

-- name: stripe_migrations_table
CREATE TABLE IF NOT EXISTS oncely_stripe_migrations (
    version       INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL,
    applied_at_ms BIGINT  NOT NULL
)

-- name: stripe_migrations_applied
SELECT version FROM oncely_stripe_migrations

-- name: stripe_migration_record
INSERT INTO oncely_stripe_migrations (version, name, applied_at_ms)
VALUES (%(version)s, %(name)s, %(now_ms)s) ON CONFLICT (version) DO NOTHING

-- name: stripe_schema_v1
CREATE TABLE IF NOT EXISTS oncely_stripe_watermark (
    name          TEXT   PRIMARY KEY,
    hour_start_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    job_id        BIGINT,
    fence         BIGINT
);
CREATE TABLE IF NOT EXISTS oncely_stripe_deliveries (
    identifier    TEXT    PRIMARY KEY,
    hour_start_ms BIGINT  NOT NULL,
    org_id        TEXT    NOT NULL,
    event_name    TEXT    NOT NULL,
    customer_id   TEXT    NOT NULL,
    value         BIGINT  NOT NULL,
    status        TEXT    NOT NULL,
    code          TEXT,
    message       TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    job_id        BIGINT,
    updated_at_ms BIGINT  NOT NULL
);
CREATE INDEX IF NOT EXISTS oncely_stripe_deliveries_hour ON oncely_stripe_deliveries (hour_start_ms);
CREATE INDEX IF NOT EXISTS oncely_stripe_deliveries_status
    ON oncely_stripe_deliveries (status, hour_start_ms);
CREATE TABLE IF NOT EXISTS oncely_stripe_hours (
    hour_start_ms  BIGINT  PRIMARY KEY,
    status         TEXT    NOT NULL,
    events         INTEGER NOT NULL DEFAULT 0,
    delivered      INTEGER NOT NULL DEFAULT 0,
    duplicates     INTEGER NOT NULL DEFAULT 0,
    failed         INTEGER NOT NULL DEFAULT 0,
    job_id         BIGINT,
    finished_at_ms BIGINT  NOT NULL,
    note           TEXT
);
CREATE TABLE IF NOT EXISTS oncely_stripe_runs (
    job_id         BIGINT  NOT NULL,
    attempt        INTEGER NOT NULL,
    started_at_ms  BIGINT  NOT NULL,
    finished_at_ms BIGINT,
    outcome        TEXT    NOT NULL,
    hours          INTEGER NOT NULL DEFAULT 0,
    events         INTEGER NOT NULL DEFAULT 0,
    note           TEXT,
    PRIMARY KEY (job_id, attempt)
)

-- name: stripe_watermark_get
SELECT hour_start_ms, updated_at_ms, job_id, fence FROM oncely_stripe_watermark
WHERE name = %(stream)s

-- name: stripe_watermark_insert
INSERT INTO oncely_stripe_watermark (name, hour_start_ms, updated_at_ms, job_id, fence)
VALUES (%(stream)s, %(new_ms)s, %(now_ms)s, %(job_id)s, %(fence)s) ON CONFLICT (name) DO NOTHING

-- name: stripe_watermark_advance
UPDATE oncely_stripe_watermark
SET hour_start_ms = %(new_ms)s, updated_at_ms = %(now_ms)s, job_id = %(job_id)s, fence = %(fence)s
WHERE name = %(stream)s AND hour_start_ms = %(expected_ms)s

-- name: stripe_deliveries_done
SELECT identifier FROM oncely_stripe_deliveries
WHERE hour_start_ms = %(hour_ms)s AND status <> 'retry'

-- name: stripe_delivery_upsert
INSERT INTO oncely_stripe_deliveries (identifier, hour_start_ms, org_id, event_name, customer_id,
    value, status, code, message, attempts, job_id, updated_at_ms)
VALUES (%(identifier)s, %(hour_start_ms)s, %(org_id)s, %(event_name)s, %(customer_id)s, %(value)s, %(status)s, %(code)s,
    %(message)s, %(attempts)s, %(job_id)s, %(updated_at_ms)s)
ON CONFLICT (identifier) DO UPDATE SET customer_id = excluded.customer_id,
    value = excluded.value, status = excluded.status, code = excluded.code,
    message = excluded.message, attempts = oncely_stripe_deliveries.attempts + excluded.attempts,
    job_id = excluded.job_id, updated_at_ms = excluded.updated_at_ms

-- name: stripe_hour_counts
SELECT status, COUNT(*) FROM oncely_stripe_deliveries
WHERE hour_start_ms = %(hour_ms)s GROUP BY status

-- name: stripe_hour_record
INSERT INTO oncely_stripe_hours (hour_start_ms, status, events, delivered, duplicates, failed,
    job_id, finished_at_ms, note)
VALUES (%(hour_ms)s, %(status)s, %(events)s, %(delivered)s, %(duplicates)s, %(failed)s, %(job_id)s, %(now_ms)s, %(note)s)
ON CONFLICT (hour_start_ms) DO UPDATE SET status = excluded.status, events = excluded.events,
    delivered = excluded.delivered, duplicates = excluded.duplicates, failed = excluded.failed,
    job_id = excluded.job_id, finished_at_ms = excluded.finished_at_ms, note = excluded.note

-- name: stripe_retry_due
SELECT identifier, hour_start_ms, org_id, event_name, customer_id, value
FROM oncely_stripe_deliveries WHERE status = 'retry'
ORDER BY hour_start_ms, identifier LIMIT %(limit)s

-- name: stripe_failures_by_code
SELECT code, status, COUNT(*), MIN(hour_start_ms), MAX(hour_start_ms)
FROM oncely_stripe_deliveries WHERE status IN ('failed', 'retry', 'lost')
GROUP BY code, status ORDER BY COUNT(*) DESC, code

-- name: stripe_failures_list
SELECT identifier, org_id, event_name, hour_start_ms, status, code, message, attempts,
    updated_at_ms
FROM oncely_stripe_deliveries WHERE status IN ('failed', 'retry')
    AND (CAST(%(code)s AS TEXT) IS NULL OR code = %(code)s)
ORDER BY hour_start_ms DESC, identifier LIMIT %(limit)s

-- name: stripe_failures_reset
UPDATE oncely_stripe_deliveries SET status = 'retry', updated_at_ms = %(now_ms)s
WHERE status = 'failed' AND (CAST(%(code)s AS TEXT) IS NULL OR code = %(code)s)
    AND (CAST(%(org_id)s AS TEXT) IS NULL OR org_id = %(org_id)s)

-- name: stripe_run_start
INSERT INTO oncely_stripe_runs (job_id, attempt, started_at_ms, outcome)
VALUES (%(job_id)s, %(attempt)s, %(now_ms)s, 'running')
ON CONFLICT (job_id, attempt) DO UPDATE SET started_at_ms = excluded.started_at_ms

-- name: stripe_run_finish
UPDATE oncely_stripe_runs SET finished_at_ms = %(now_ms)s, outcome = %(outcome)s, hours = %(hours)s,
    events = %(events)s, note = %(note)s
WHERE job_id = %(job_id)s AND attempt = %(attempt)s

-- name: stripe_run_last
SELECT job_id, attempt, started_at_ms, finished_at_ms, outcome, hours, events, note
FROM oncely_stripe_runs ORDER BY started_at_ms DESC, job_id DESC, attempt DESC LIMIT 1

-- name: stripe_hours_summary
SELECT status, COUNT(*), MIN(hour_start_ms), MAX(hour_start_ms), SUM(events)
FROM oncely_stripe_hours GROUP BY status

-- name: stripe_billable_projects
-- Projects of orgs with a Stripe customer, live at some point of the hour (not deleted before
-- it started): their usage in the hour is billable.
SELECT p.id, o.id, o.stripe_customer_id
FROM metering_projects p JOIN metering_organizations o ON o.id = p.org_id
WHERE o.stripe_customer_id IS NOT NULL AND o.stripe_customer_id <> ''
    AND (p.deleted_at IS NULL OR p.deleted_at > to_timestamp(%(hour_start)s))

-- name: stripe_org_customers
SELECT id, stripe_customer_id FROM metering_organizations
WHERE stripe_customer_id IS NOT NULL AND stripe_customer_id <> ''
