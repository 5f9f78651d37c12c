-- The billing figures (oncely_billing.metrics) read at every scrape of /metrics: a catalog
-- lookup and index ranges (with billing_outbox_counts and billing_org_states, scans of tables
-- with one row per organization, or per organization, cycle and threshold crossed).

-- name: billing_tables_present
-- to_regclass follows the search_path, as the queries below do.
SELECT name FROM unnest(ARRAY['metering_notification_outbox', 'oncely_stripe_deliveries',
    'oncely_stripe_watermark', 'oncely_stripe_reconciliations']) AS t(name)
WHERE to_regclass(name) IS NOT NULL

-- name: billing_stripe_events_since
-- Meter events of the usage hours since a given hour, by status (the index on the hour).
SELECT status, COUNT(*) FROM oncely_stripe_deliveries WHERE hour_start_ms >= %(since_ms)s
GROUP BY status

-- name: billing_stripe_events_unsent
-- Events not (yet) taken by Stripe, whatever their hour (the index on the status).
SELECT status, COUNT(*) FROM oncely_stripe_deliveries WHERE status IN ('failed', 'retry', 'lost')
GROUP BY status

-- name: billing_stripe_watermark
SELECT hour_start_ms FROM oncely_stripe_watermark WHERE name = %(stream)s

-- name: billing_last_reconciliation
-- The figures of the last finished reconciliation of Stripe's totals with the usage source.
SELECT late, corrections_sent, refused, past_window, over_billed, finished_at_ms
FROM oncely_stripe_reconciliations WHERE finished_at_ms IS NOT NULL
ORDER BY finished_at_ms DESC, job_id DESC, attempt DESC LIMIT 1
