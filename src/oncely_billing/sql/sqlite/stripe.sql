-- Stripe usage metering (oncely_billing.meter): tables and queries, SQLite.
-- The tables are created by the numbered migrations of this folder (0003_stripe,
-- 0004_stripe_corrections). Instants are epoch milliseconds (BIGINT).

-- name: stripe_watermark_get
SELECT hour_start_ms, updated_at_ms, job_id, fence FROM oncely_stripe_watermark
WHERE name = :stream

-- name: stripe_watermark_insert
INSERT INTO oncely_stripe_watermark (name, hour_start_ms, updated_at_ms, job_id, fence)
VALUES (:stream, :new_ms, :now_ms, :job_id, :fence) ON CONFLICT (name) DO NOTHING

-- name: stripe_watermark_advance
UPDATE oncely_stripe_watermark
SET hour_start_ms = :new_ms, updated_at_ms = :now_ms, job_id = :job_id, fence = :fence
WHERE name = :stream AND hour_start_ms = :expected_ms

-- name: stripe_deliveries_of_hour
-- Every event of the hour on record but those a human reset ('retry': sent at the run's start).
SELECT identifier, status, org_id, event_name, customer_id, value, correction
FROM oncely_stripe_deliveries
WHERE hour_start_ms = :hour_ms AND status <> 'retry'

-- name: stripe_delivery_upsert
INSERT INTO oncely_stripe_deliveries (identifier, hour_start_ms, org_id, event_name, customer_id,
    value, status, code, message, attempts, job_id, updated_at_ms, correction)
VALUES (:identifier, :hour_start_ms, :org_id, :event_name, :customer_id, :value, :status, :code,
    :message, :attempts, :job_id, :updated_at_ms, :correction)
ON CONFLICT (identifier) DO UPDATE SET customer_id = excluded.customer_id,
    value = excluded.value, status = excluded.status, code = excluded.code,
    message = excluded.message, attempts = oncely_stripe_deliveries.attempts + excluded.attempts,
    job_id = excluded.job_id, updated_at_ms = excluded.updated_at_ms

-- name: stripe_hour_counts
SELECT status, COUNT(*) FROM oncely_stripe_deliveries
WHERE hour_start_ms = :hour_ms GROUP BY status

-- name: stripe_hour_record
INSERT INTO oncely_stripe_hours (hour_start_ms, status, events, delivered, duplicates, failed,
    job_id, finished_at_ms, note)
VALUES (:hour_ms, :status, :events, :delivered, :duplicates, :failed, :job_id, :now_ms, :note)
ON CONFLICT (hour_start_ms) DO UPDATE SET status = excluded.status, events = excluded.events,
    delivered = excluded.delivered, duplicates = excluded.duplicates, failed = excluded.failed,
    job_id = excluded.job_id, finished_at_ms = excluded.finished_at_ms, note = excluded.note

-- name: stripe_retry_due
SELECT identifier, hour_start_ms, org_id, event_name, customer_id, value, correction
FROM oncely_stripe_deliveries WHERE status = 'retry'
ORDER BY hour_start_ms, identifier LIMIT :limit

-- name: stripe_failures_by_code
SELECT code, status, COUNT(*), MIN(hour_start_ms), MAX(hour_start_ms)
FROM oncely_stripe_deliveries WHERE status IN ('failed', 'retry', 'lost')
GROUP BY code, status ORDER BY COUNT(*) DESC, code

-- name: stripe_failures_list
SELECT identifier, org_id, event_name, hour_start_ms, status, code, message, attempts,
    updated_at_ms
FROM oncely_stripe_deliveries WHERE status IN ('failed', 'retry')
    AND (CAST(:code AS TEXT) IS NULL OR code = :code)
ORDER BY hour_start_ms DESC, identifier LIMIT :limit

-- name: stripe_failures_reset
UPDATE oncely_stripe_deliveries SET status = 'retry', updated_at_ms = :now_ms
WHERE status = 'failed' AND (CAST(:code AS TEXT) IS NULL OR code = :code)
    AND (CAST(:org_id AS TEXT) IS NULL OR org_id = :org_id)

-- name: stripe_run_start
INSERT INTO oncely_stripe_runs (job_id, attempt, started_at_ms, outcome)
VALUES (:job_id, :attempt, :now_ms, 'running')
ON CONFLICT (job_id, attempt) DO UPDATE SET started_at_ms = excluded.started_at_ms

-- name: stripe_run_finish
UPDATE oncely_stripe_runs SET finished_at_ms = :now_ms, outcome = :outcome, hours = :hours,
    events = :events, note = :note
WHERE job_id = :job_id AND attempt = :attempt

-- name: stripe_run_last
SELECT job_id, attempt, started_at_ms, finished_at_ms, outcome, hours, events, note
FROM oncely_stripe_runs ORDER BY started_at_ms DESC, job_id DESC, attempt DESC LIMIT 1

-- name: stripe_hours_summary
SELECT status, COUNT(*), MIN(hour_start_ms), MAX(hour_start_ms), SUM(events)
FROM oncely_stripe_hours GROUP BY status

-- name: stripe_org_customers
SELECT id, stripe_customer_id FROM metering_organizations
WHERE stripe_customer_id IS NOT NULL AND stripe_customer_id <> ''

-- Late usage (oncely_billing.stripe_reconcile) -------------------------------------------------

-- name: stripe_hours_reported
SELECT hour_start_ms FROM oncely_stripe_hours
WHERE status = 'reported' AND hour_start_ms >= :start_ms AND hour_start_ms < :end_ms

-- name: stripe_sent_by_day
-- Units on record per (org, meter, UTC day): every row counts (delivered, duplicate, sending,
-- failed, retry, lost), because each holds its value under an identifier of its own.
SELECT org_id, event_name, hour_start_ms / 86400000, SUM(value)
FROM oncely_stripe_deliveries
WHERE hour_start_ms >= :start_ms AND hour_start_ms < :end_ms
GROUP BY org_id, event_name, hour_start_ms / 86400000

-- name: stripe_sent_by_hour
-- Units on record and corrections per (org, meter, hour) of some orgs; a correction is any row
-- but the hour's own event (counted by identifier, so rows kept across a rollback count too).
SELECT org_id, event_name, hour_start_ms, SUM(value),
    SUM(CASE WHEN identifier = event_name || ':' || org_id || ':' || CAST(hour_start_ms AS TEXT)
        THEN 0 ELSE 1 END)
FROM oncely_stripe_deliveries
WHERE hour_start_ms >= :start_ms AND hour_start_ms < :end_ms
    AND org_id IN (SELECT value FROM json_each(:orgs))
GROUP BY org_id, event_name, hour_start_ms

-- name: stripe_sent_by_hour_all
SELECT org_id, event_name, hour_start_ms, SUM(value),
    SUM(CASE WHEN identifier = event_name || ':' || org_id || ':' || CAST(hour_start_ms AS TEXT)
        THEN 0 ELSE 1 END)
FROM oncely_stripe_deliveries
WHERE hour_start_ms >= :start_ms AND hour_start_ms < :end_ms
GROUP BY org_id, event_name, hour_start_ms

-- name: stripe_corrections_open
-- Corrections written down but not known to have reached Stripe (a run stopped after writing
-- them): sent again, with the value on record, before anything new.
SELECT identifier, hour_start_ms, org_id, event_name, customer_id, value, correction
FROM oncely_stripe_deliveries WHERE status = 'sending'
ORDER BY hour_start_ms, identifier LIMIT :limit

-- name: stripe_corrections_open_count
SELECT COUNT(*) FROM oncely_stripe_deliveries WHERE status = 'sending'

-- name: stripe_delivery_write_down
-- An event about to be sent, written down first ('sending') with the value it is sent with.
INSERT INTO oncely_stripe_deliveries (identifier, hour_start_ms, org_id, event_name, customer_id,
    value, status, attempts, job_id, updated_at_ms, correction)
VALUES (:identifier, :hour_start_ms, :org_id, :event_name, :customer_id, :value, 'sending', 0,
    :job_id, :updated_at_ms, :correction)
ON CONFLICT (identifier) DO NOTHING

-- name: stripe_reconciliation_record
INSERT INTO oncely_stripe_reconciliations (
    job_id, attempt, started_at_ms, finished_at_ms, window_start_ms, window_end_ms, mode,
    outcome, orgs_checked, late, late_units, corrections_sent, refused, past_window,
    past_window_units, over_billed, over_billed_units, details)
VALUES (
    :job_id, :attempt, :started_at_ms, :finished_at_ms, :window_start_ms, :window_end_ms,
    :mode, :outcome, :orgs_checked, :late, :late_units, :corrections_sent, :refused,
    :past_window, :past_window_units, :over_billed, :over_billed_units, :details)
ON CONFLICT (job_id, attempt) DO UPDATE SET
    finished_at_ms = excluded.finished_at_ms, window_start_ms = excluded.window_start_ms,
    window_end_ms = excluded.window_end_ms, mode = excluded.mode, outcome = excluded.outcome,
    orgs_checked = excluded.orgs_checked, late = excluded.late,
    late_units = excluded.late_units, corrections_sent = excluded.corrections_sent,
    refused = excluded.refused, past_window = excluded.past_window,
    past_window_units = excluded.past_window_units, over_billed = excluded.over_billed,
    over_billed_units = excluded.over_billed_units, details = excluded.details

-- name: stripe_reconciliation_last
SELECT
    job_id, attempt, started_at_ms, finished_at_ms, window_start_ms, window_end_ms, mode,
    outcome, orgs_checked, late, late_units, corrections_sent, refused, past_window,
    past_window_units, over_billed, over_billed_units
FROM oncely_stripe_reconciliations ORDER BY started_at_ms DESC, job_id DESC, attempt DESC LIMIT 1

-- name: stripe_billable_projects_since
-- Projects of orgs with a Stripe customer, not deleted before `start`, with their deletion
-- instant (epoch seconds): a bucket counts a project not deleted before the bucket began.
SELECT p.id, o.id, o.stripe_customer_id, p.deleted_at
FROM metering_projects p JOIN metering_organizations o ON o.id = p.org_id
WHERE o.stripe_customer_id IS NOT NULL AND o.stripe_customer_id <> ''
    AND (p.deleted_at IS NULL OR p.deleted_at > :start)
