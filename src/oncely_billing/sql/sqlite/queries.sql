-- oncely_billing named queries (SQLite). Parameters are :named. Batches arrive as one JSON
-- array of arrays in :rows (see oncely_billing.db); days as epoch days, instants as epoch seconds.

-- name: migrations_table_create
CREATE TABLE IF NOT EXISTS oncely_metering_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
)

-- name: migrate_lock
SELECT 1

-- name: migrations_current_version
SELECT COALESCE(MAX(version), 0) FROM oncely_metering_migrations

-- name: migration_delete
DELETE FROM oncely_metering_migrations WHERE version = :version

-- name: migration_record
INSERT INTO oncely_metering_migrations (version, name, applied_at) VALUES (:version, :name, :now)

-- name: state_get
SELECT value FROM metering_state WHERE key = :key

-- name: state_put
INSERT INTO metering_state (key, value, updated_at) VALUES (:key, :value, :now)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at

-- name: state_prefix
-- The rows of one family of keys (LIKE pattern), e.g. a fan-out run's plan and chunk records.
SELECT key, value FROM metering_state WHERE key LIKE :prefix ORDER BY key

-- name: state_prune
DELETE FROM metering_state WHERE key LIKE :prefix AND updated_at < :before

-- name: org_ids
SELECT id FROM metering_organizations ORDER BY id

-- name: gate_generation_bump
INSERT INTO metering_state (key, value, updated_at) VALUES ('gate.generation', '1', :now)
ON CONFLICT (key) DO UPDATE
SET value = CAST(CAST(metering_state.value AS INTEGER) + 1 AS TEXT), updated_at = excluded.updated_at

-- name: projects_active
SELECT id, org_id FROM metering_projects WHERE deleted_at IS NULL ORDER BY id

-- name: org_get
SELECT o.id, o.name, o.plan, o.subscription_status, o.plan_override, o.external_billing,
       o.stripe_customer_id, o.billing_cycle_anchor, o.created_at, o.anchor_day,
       CAST(julianday(o.cycle_start) - 2440587.5 AS INTEGER) AS cycle_start_day,
       o.cycle_usage, o.threshold_state, o.state_changed_at, o.usage_updated_at, o.updated_at,
       (COALESCE(o.subscription_status, '') IN ('active', 'trialing', 'past_due')
        OR o.plan_override IS NOT NULL OR o.external_billing IS NOT NULL) AS paid
FROM metering_organizations o WHERE o.id = :org_id

-- name: org_recipients
SELECT email, name, role FROM metering_members
WHERE org_id = :org_id AND role IN ('OWNER', 'ADMIN') ORDER BY role DESC, email

-- name: org_members
SELECT email, name, role FROM metering_members WHERE org_id = :org_id ORDER BY role DESC, email

-- name: org_usage_days
SELECT CAST(julianday(day) - 2440587.5 AS INTEGER), traces, observations, scores, units
FROM metering_usage_daily WHERE org_id = :org_id AND day >= date(:since_day * 86400, 'unixepoch')
ORDER BY day

-- name: orgs_count
SELECT COUNT(*) FROM metering_organizations

-- name: orgs_insert_batch
INSERT INTO metering_organizations (id, name, plan, subscription_status, plan_override,
    external_billing, stripe_customer_id, billing_cycle_anchor, created_at, updated_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
       json_extract(value, '$[6]'), json_extract(value, '$[7]'), json_extract(value, '$[8]'), :now
FROM json_each(:rows)

-- name: projects_insert_batch
INSERT INTO metering_projects (id, org_id, name, created_at, deleted_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]')
FROM json_each(:rows)

-- name: members_insert_batch
INSERT INTO metering_members (org_id, email, name, role, created_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]')
FROM json_each(:rows)

-- name: metering_data_clear
DELETE FROM metering_organizations;
DELETE FROM metering_projects;
DELETE FROM metering_members;
DELETE FROM metering_usage_daily;
DELETE FROM metering_notification_outbox;
DELETE FROM metering_state;
DELETE FROM metering_chunk_failures;
DELETE FROM metering_traces;
DELETE FROM metering_observations;
DELETE FROM metering_scores

-- name: rollup_window
SELECT org_id, CAST(julianday(day) - 2440587.5 AS INTEGER), traces, observations, scores
FROM metering_usage_daily
WHERE day >= date(:first_day * 86400, 'unixepoch') AND day <= date(:last_day * 86400, 'unixepoch')

-- name: rollup_upsert_batch
INSERT INTO metering_usage_daily (org_id, day, traces, observations, scores, units, updated_at)
SELECT json_extract(value, '$[0]'), date(json_extract(value, '$[1]') * 86400, 'unixepoch'),
       json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]'),
       json_extract(value, '$[2]') + json_extract(value, '$[3]') + json_extract(value, '$[4]'),
       :now
FROM json_each(:rows) WHERE true
ON CONFLICT (org_id, day) DO UPDATE SET
    traces = excluded.traces, observations = excluded.observations, scores = excluded.scores,
    units = excluded.units, updated_at = excluded.updated_at

-- name: rollup_delete_batch
DELETE FROM metering_usage_daily
WHERE (org_id, day) IN (
    SELECT json_extract(value, '$[0]'), date(json_extract(value, '$[1]') * 86400, 'unixepoch')
    FROM json_each(:rows))

-- name: rollup_prune
DELETE FROM metering_usage_daily WHERE day < date(:before_day * 86400, 'unixepoch')

-- name: evaluate_orgs
-- Every organization's current-cycle usage from the rollup, in one statement; returns only the
-- organizations whose recorded usage, cycle or state may have to change (Python decides).
-- The CTEs over JSON are materialized once; usage is summed by a grouped join (a correlated
-- subquery would be evaluated once per reference to it).
WITH cycles AS MATERIALIZED (
    SELECT json_extract(value, '$[0]') AS anchor_day,
           date(json_extract(value, '$[1]') * 86400, 'unixepoch') AS cycle_start
    FROM json_each(:cycles)
), plans AS MATERIALIZED (
    SELECT json_extract(value, '$[0]') AS plan, json_extract(value, '$[1]') AS warn_at,
           json_extract(value, '$[2]') AS block_at
    FROM json_each(:plans)
), current AS (
    SELECT o.id, c.cycle_start,
           (COALESCE(o.subscription_status, '') IN ('active', 'trialing', 'past_due')
            OR o.plan_override IS NOT NULL OR o.external_billing IS NOT NULL) AS paid,
           COALESCE(p.warn_at, :default_warn_at) AS warn_at,
           COALESCE(p.block_at, :default_block_at) AS block_at
    FROM metering_organizations o
    JOIN cycles c ON c.anchor_day = o.anchor_day
    LEFT JOIN plans p ON p.plan = o.plan
    WHERE o.id BETWEEN :org_lo AND :org_hi  -- one fan-out chunk, or every organization
), measured AS (
    SELECT cur.id, cur.cycle_start, cur.paid, cur.warn_at, cur.block_at,
           CASE WHEN cur.paid THEN NULL ELSE COALESCE(SUM(r.units), 0) END AS usage
    FROM current cur
    LEFT JOIN metering_usage_daily r
           ON r.org_id = cur.id AND r.day >= cur.cycle_start AND NOT cur.paid
          AND r.day >= date(:earliest_day * 86400, 'unixepoch')
    GROUP BY cur.id
)
SELECT m.id, m.paid, o.plan,
       CAST(julianday(o.cycle_start) - 2440587.5 AS INTEGER), o.cycle_usage, o.threshold_state,
       CAST(julianday(m.cycle_start) - 2440587.5 AS INTEGER), m.usage, o.anchor_day
FROM measured m JOIN metering_organizations o ON o.id = m.id
WHERE (m.paid AND o.threshold_state IS NOT NULL)
   OR (NOT m.paid AND (
           o.cycle_usage <> m.usage
        OR (o.cycle_start IS NOT m.cycle_start AND (o.cycle_usage <> 0 OR m.usage <> 0))
        OR o.threshold_state IS NOT (CASE WHEN NOT :enforce THEN NULL
                                          WHEN m.usage >= m.block_at THEN 'BLOCKED'
                                          WHEN m.usage >= m.warn_at THEN 'WARNING' END)))
ORDER BY m.id

-- name: orgs_update_batch
WITH v AS (
    SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS cycle_day,
           json_extract(value, '$[2]') AS usage, json_extract(value, '$[3]') AS state,
           json_extract(value, '$[4]') AS state_changed, json_extract(value, '$[5]') AS usage_changed
    FROM json_each(:rows)
)
UPDATE metering_organizations AS o SET
    cycle_start = CASE WHEN v.cycle_day IS NULL THEN NULL
                       ELSE date(v.cycle_day * 86400, 'unixepoch') END,
    cycle_usage = v.usage,
    threshold_state = v.state,
    state_changed_at = CASE WHEN v.state_changed THEN :now ELSE o.state_changed_at END,
    usage_updated_at = CASE WHEN v.usage_changed THEN :now ELSE o.usage_updated_at END,
    updated_at = :now
FROM v WHERE o.id = v.id

-- name: outbox_insert_batch
INSERT INTO metering_notification_outbox (org_id, cycle_start, threshold, kind, usage, included,
    block_at, reset_date, created_at)
SELECT json_extract(value, '$[0]'), date(json_extract(value, '$[1]') * 86400, 'unixepoch'),
       json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]'),
       json_extract(value, '$[5]'), json_extract(value, '$[6]'),
       date(json_extract(value, '$[7]') * 86400, 'unixepoch'), :now
FROM json_each(:rows) WHERE true
ON CONFLICT (org_id, cycle_start, threshold) DO NOTHING
RETURNING id

-- name: outbox_get
SELECT b.id, b.org_id, o.name, CAST(julianday(b.cycle_start) - 2440587.5 AS INTEGER), b.threshold,
       b.kind, b.usage, b.included, b.block_at,
       CAST(julianday(b.reset_date) - 2440587.5 AS INTEGER), b.status, b.attempts
FROM metering_notification_outbox b JOIN metering_organizations o ON o.id = b.org_id
WHERE b.id = :outbox_id

-- name: outbox_for_org
SELECT id, CAST(julianday(cycle_start) - 2440587.5 AS INTEGER), threshold, kind, usage, status,
       created_at, sent_at, recipients
FROM metering_notification_outbox WHERE org_id = :org_id ORDER BY id DESC LIMIT :limit

-- name: outbox_list
SELECT id, org_id, CAST(julianday(cycle_start) - 2440587.5 AS INTEGER), threshold, kind, usage,
       status, recipients
FROM metering_notification_outbox ORDER BY id

-- name: outbox_attempt
UPDATE metering_notification_outbox SET attempts = attempts + 1, last_error = :error
WHERE id = :outbox_id

-- name: outbox_finish
UPDATE metering_notification_outbox
SET status = :status, recipients = :recipients, sent_at = :now, attempts = attempts + 1,
    last_error = NULL
WHERE id = :outbox_id AND status = 'pending'

-- name: chunk_failure_insert
INSERT INTO metering_chunk_failures (job_id, failed_at, org_ids, error)
VALUES (:job_id, :now, :org_ids, :error)

-- name: chunk_failures_open
SELECT id, org_ids FROM metering_chunk_failures WHERE resolved_at IS NULL ORDER BY id

-- name: chunk_failures_resolve
UPDATE metering_chunk_failures SET resolved_at = :now, resolved_by = :job_id
WHERE resolved_at IS NULL AND id IN (SELECT value FROM json_each(:ids))

-- name: usage_by_project
-- The "sql" usage source: units per project and bucket (:bucket seconds) in [:start, :end).
SELECT project_id, bucket, SUM(t), SUM(o), SUM(s) FROM (
    SELECT project_id, CAST(timestamp / :bucket AS INTEGER) * :bucket AS bucket,
           COUNT(*) AS t, 0 AS o, 0 AS s
    FROM metering_traces WHERE timestamp >= :start AND timestamp < :end GROUP BY 1, 2
    UNION ALL
    SELECT project_id, CAST(start_time / :bucket AS INTEGER) * :bucket, 0, COUNT(*), 0
    FROM metering_observations WHERE start_time >= :start AND start_time < :end GROUP BY 1, 2
    UNION ALL
    SELECT project_id, CAST(timestamp / :bucket AS INTEGER) * :bucket, 0, 0, COUNT(*)
    FROM metering_scores WHERE timestamp >= :start AND timestamp < :end GROUP BY 1, 2
) GROUP BY project_id, bucket

-- name: traces_insert_batch
INSERT INTO metering_traces (id, project_id, timestamp, name)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]')
FROM json_each(:rows)

-- name: observations_insert_batch
INSERT INTO metering_observations (id, trace_id, project_id, start_time, type)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]')
FROM json_each(:rows)

-- name: scores_insert_batch
INSERT INTO metering_scores (id, trace_id, project_id, timestamp, name, value)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]')
FROM json_each(:rows)

-- name: statement_timeout
-- SQLite has no statement timeout; the usage source sets a progress handler instead.
SELECT :ms

-- name: org_set_billing
UPDATE metering_organizations
SET subscription_status = :subscription_status, plan_override = :plan_override,
    external_billing = :external_billing, plan = :plan, updated_at = :now
WHERE id = :org_id

-- name: project_delete
UPDATE metering_projects SET deleted_at = :now WHERE id = :project_id AND deleted_at IS NULL

-- name: outbox_sweep_due
-- Pending rows old enough that their first send job had its chance, not looked at recently.
SELECT id, sweeps FROM metering_notification_outbox
WHERE status = 'pending' AND created_at <= :settled
  AND (next_sweep_at IS NULL OR next_sweep_at <= :now)
ORDER BY id LIMIT :limit

-- name: outbox_sweep_mark
UPDATE metering_notification_outbox SET sweeps = sweeps + :added, next_sweep_at = :next_at
WHERE id = :outbox_id

-- name: outbox_pending_count
SELECT COUNT(*) FROM metering_notification_outbox WHERE status = 'pending'

-- name: billing_outbox_counts
-- Notifications by status; "failing": pending rows whose last send attempt failed.
SELECT status, COUNT(*), SUM(CASE WHEN last_error IS NOT NULL THEN 1 ELSE 0 END)
FROM metering_notification_outbox GROUP BY status

-- name: billing_org_states
SELECT threshold_state, COUNT(*) FROM metering_organizations
WHERE threshold_state IS NOT NULL GROUP BY threshold_state

-- name: billing_stripe_delivery_counts
SELECT status, COUNT(*) FROM oncely_stripe_deliveries GROUP BY status
