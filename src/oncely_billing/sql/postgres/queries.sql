-- oncely_billing named queries (PostgreSQL). Parameters are %(named)s. Batches arrive as one
-- array per column (see oncely_billing.db); days as epoch days, instants as epoch seconds.

-- name: migrations_table_create
CREATE TABLE IF NOT EXISTS oncely_metering_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL
)

-- name: migrate_lock
SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.oncely_metering_migrations'))

-- name: migrations_current_version
SELECT COALESCE(MAX(version), 0) FROM oncely_metering_migrations

-- name: migration_delete
DELETE FROM oncely_metering_migrations WHERE version = %(version)s

-- name: migration_record
INSERT INTO oncely_metering_migrations (version, name, applied_at)
VALUES (%(version)s, %(name)s, to_timestamp(%(now)s))

-- name: state_get
SELECT value FROM metering_state WHERE key = %(key)s

-- name: state_put
INSERT INTO metering_state (key, value, updated_at) VALUES (%(key)s, %(value)s, to_timestamp(%(now)s))
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at

-- name: state_prefix
-- The rows of one family of keys (LIKE pattern), e.g. a fan-out run's plan and chunk records.
SELECT key, value FROM metering_state WHERE key LIKE %(prefix)s ORDER BY key

-- name: state_prune
DELETE FROM metering_state WHERE key LIKE %(prefix)s AND updated_at < to_timestamp(%(before)s)

-- name: org_ids
SELECT id FROM metering_organizations ORDER BY id

-- name: gate_generation_bump
INSERT INTO metering_state (key, value, updated_at)
VALUES ('gate.generation', '1', to_timestamp(%(now)s))
ON CONFLICT (key) DO UPDATE
SET value = (metering_state.value::bigint + 1)::text, updated_at = excluded.updated_at

-- name: projects_active
SELECT id, org_id FROM metering_projects WHERE deleted_at IS NULL ORDER BY id

-- name: org_get
SELECT o.id, o.name, o.plan, o.subscription_status, o.plan_override, o.external_billing,
       o.stripe_customer_id, extract(epoch FROM o.billing_cycle_anchor)::float8,
       extract(epoch FROM o.created_at)::float8, o.anchor_day,
       o.cycle_start - DATE '1970-01-01' AS cycle_start_day,
       o.cycle_usage, o.threshold_state, extract(epoch FROM o.state_changed_at)::float8,
       extract(epoch FROM o.usage_updated_at)::float8, extract(epoch FROM o.updated_at)::float8,
       (COALESCE(o.subscription_status, '') IN ('active', 'trialing', 'past_due')
        OR o.plan_override IS NOT NULL OR o.external_billing IS NOT NULL) AS paid
FROM metering_organizations o WHERE o.id = %(org_id)s

-- name: org_recipients
SELECT email, name, role FROM metering_members
WHERE org_id = %(org_id)s AND role IN ('OWNER', 'ADMIN') ORDER BY role DESC, email

-- name: org_members
SELECT email, name, role FROM metering_members WHERE org_id = %(org_id)s ORDER BY role DESC, email

-- name: org_usage_days
SELECT day - DATE '1970-01-01', traces, observations, scores, units
FROM metering_usage_daily
WHERE org_id = %(org_id)s AND day >= DATE '1970-01-01' + %(since_day)s::int
ORDER BY day

-- name: orgs_count
SELECT COUNT(*) FROM metering_organizations

-- name: orgs_insert_batch
INSERT INTO metering_organizations (id, name, plan, subscription_status, plan_override,
    external_billing, stripe_customer_id, billing_cycle_anchor, created_at, updated_at)
SELECT v.id, v.name, v.plan, v.subscription_status, v.plan_override, v.external_billing,
       v.stripe_customer_id, to_timestamp(v.billing_cycle_anchor), to_timestamp(v.created_at),
       to_timestamp(%(now)s)
FROM unnest(%(id)s::bigint[], %(name)s::text[], %(plan)s::text[], %(subscription_status)s::text[],
            %(plan_override)s::text[], %(external_billing)s::text[],
            %(stripe_customer_id)s::text[], %(billing_cycle_anchor)s::float8[],
            %(created_at)s::float8[])
     AS v(id, name, plan, subscription_status, plan_override, external_billing,
          stripe_customer_id, billing_cycle_anchor, created_at)

-- name: projects_insert_batch
INSERT INTO metering_projects (id, org_id, name, created_at, deleted_at)
SELECT v.id, v.org_id, v.name, to_timestamp(v.created_at), to_timestamp(v.deleted_at)
FROM unnest(%(id)s::bigint[], %(org_id)s::bigint[], %(name)s::text[], %(created_at)s::float8[],
            %(deleted_at)s::float8[]) AS v(id, org_id, name, created_at, deleted_at)

-- name: members_insert_batch
INSERT INTO metering_members (org_id, email, name, role, created_at)
SELECT v.org_id, v.email, v.name, v.role, to_timestamp(v.created_at)
FROM unnest(%(org_id)s::bigint[], %(email)s::text[], %(name)s::text[], %(role)s::text[],
            %(created_at)s::float8[]) AS v(org_id, email, name, role, created_at)

-- name: metering_data_clear
TRUNCATE metering_organizations, metering_projects, metering_members, metering_usage_daily,
    metering_notification_outbox, metering_state, metering_chunk_failures, metering_traces,
    metering_observations, metering_scores

-- name: rollup_window
SELECT org_id, day - DATE '1970-01-01', traces, observations, scores
FROM metering_usage_daily
WHERE day >= DATE '1970-01-01' + %(first_day)s::int AND day <= DATE '1970-01-01' + %(last_day)s::int

-- name: rollup_upsert_batch
INSERT INTO metering_usage_daily (org_id, day, traces, observations, scores, units, updated_at)
SELECT v.org_id, DATE '1970-01-01' + v.day, v.traces, v.observations, v.scores,
       v.traces + v.observations + v.scores, to_timestamp(%(now)s)
FROM unnest(%(org_id)s::bigint[], %(day)s::int[], %(traces)s::bigint[],
            %(observations)s::bigint[], %(scores)s::bigint[])
     AS v(org_id, day, traces, observations, scores)
ON CONFLICT (org_id, day) DO UPDATE SET
    traces = excluded.traces, observations = excluded.observations, scores = excluded.scores,
    units = excluded.units, updated_at = excluded.updated_at

-- name: rollup_delete_batch
DELETE FROM metering_usage_daily r
USING unnest(%(org_id)s::bigint[], %(day)s::int[]) AS v(org_id, day)
WHERE r.org_id = v.org_id AND r.day = DATE '1970-01-01' + v.day

-- name: rollup_prune
DELETE FROM metering_usage_daily WHERE day < DATE '1970-01-01' + %(before_day)s::int

-- name: evaluate_orgs
-- Every organization's current-cycle usage from the rollup, in one statement; returns only the
-- organizations whose recorded usage, cycle or state may have to change (Python decides).
WITH cycles AS (
    SELECT c.anchor_day, DATE '1970-01-01' + c.start_day AS cycle_start
    FROM unnest(%(cycle_anchor_day)s::int[], %(cycle_start_day)s::int[]) AS c(anchor_day, start_day)
), plans AS (
    SELECT * FROM unnest(%(plan_name)s::text[], %(plan_warn_at)s::bigint[],
                         %(plan_block_at)s::bigint[]) AS p(plan, warn_at, block_at)
), current AS (
    SELECT o.id, c.cycle_start,
           (COALESCE(o.subscription_status, '') IN ('active', 'trialing', 'past_due')
            OR o.plan_override IS NOT NULL OR o.external_billing IS NOT NULL) AS paid,
           COALESCE(p.warn_at, %(default_warn_at)s::bigint) AS warn_at,
           COALESCE(p.block_at, %(default_block_at)s::bigint) AS block_at
    FROM metering_organizations o
    JOIN cycles c ON c.anchor_day = o.anchor_day
    LEFT JOIN plans p ON p.plan = o.plan
    WHERE o.id BETWEEN %(org_lo)s::bigint AND %(org_hi)s::bigint  -- one fan-out chunk, or every organization
), sums AS (
    SELECT r.org_id, SUM(r.units)::bigint AS units
    FROM metering_usage_daily r
    JOIN current cur ON cur.id = r.org_id AND NOT cur.paid
    WHERE r.day >= cur.cycle_start
      AND r.day >= DATE '1970-01-01' + %(earliest_day)s::int  -- skips rows kept for history
    GROUP BY r.org_id
), measured AS (
    SELECT cur.*, CASE WHEN cur.paid THEN NULL ELSE COALESCE(s.units, 0) END AS usage
    FROM current cur LEFT JOIN sums s ON s.org_id = cur.id
)
SELECT m.id, m.paid, o.plan, o.cycle_start - DATE '1970-01-01', o.cycle_usage, o.threshold_state,
       m.cycle_start - DATE '1970-01-01', m.usage, o.anchor_day
FROM measured m JOIN metering_organizations o ON o.id = m.id
WHERE (m.paid AND o.threshold_state IS NOT NULL)
   OR (NOT m.paid AND (
           o.cycle_usage <> m.usage
        OR (o.cycle_start IS DISTINCT FROM m.cycle_start AND (o.cycle_usage <> 0 OR m.usage <> 0))
        OR o.threshold_state IS DISTINCT FROM (CASE WHEN NOT %(enforce)s THEN NULL
                                                    WHEN m.usage >= m.block_at THEN 'BLOCKED'
                                                    WHEN m.usage >= m.warn_at THEN 'WARNING' END)))
ORDER BY m.id

-- name: orgs_update_batch
UPDATE metering_organizations AS o SET
    cycle_start = DATE '1970-01-01' + v.cycle_day,
    cycle_usage = v.usage,
    threshold_state = v.state,
    state_changed_at = CASE WHEN v.state_changed THEN to_timestamp(%(now)s) ELSE o.state_changed_at END,
    usage_updated_at = CASE WHEN v.usage_changed THEN to_timestamp(%(now)s) ELSE o.usage_updated_at END,
    updated_at = to_timestamp(%(now)s)
FROM unnest(%(id)s::bigint[], %(cycle_day)s::int[], %(usage)s::bigint[], %(state)s::text[],
            %(state_changed)s::bool[], %(usage_changed)s::bool[])
     AS v(id, cycle_day, usage, state, state_changed, usage_changed)
WHERE o.id = v.id

-- name: outbox_insert_batch
INSERT INTO metering_notification_outbox (org_id, cycle_start, threshold, kind, usage, included,
    block_at, reset_date, created_at)
SELECT v.org_id, DATE '1970-01-01' + v.cycle_day, v.threshold, v.kind, v.usage, v.included,
       v.block_at, DATE '1970-01-01' + v.reset_day, to_timestamp(%(now)s)
FROM unnest(%(org_id)s::bigint[], %(cycle_day)s::int[], %(threshold)s::bigint[], %(kind)s::text[],
            %(usage)s::bigint[], %(included)s::bigint[], %(block_at)s::bigint[],
            %(reset_day)s::int[])
     AS v(org_id, cycle_day, threshold, kind, usage, included, block_at, reset_day)
ON CONFLICT (org_id, cycle_start, threshold) DO NOTHING
RETURNING id

-- name: outbox_get
SELECT b.id, b.org_id, o.name, b.cycle_start - DATE '1970-01-01', b.threshold, b.kind, b.usage,
       b.included, b.block_at, b.reset_date - DATE '1970-01-01', b.status, b.attempts
FROM metering_notification_outbox b JOIN metering_organizations o ON o.id = b.org_id
WHERE b.id = %(outbox_id)s

-- name: outbox_for_org
SELECT id, cycle_start - DATE '1970-01-01', threshold, kind, usage, status,
       extract(epoch FROM created_at)::float8, extract(epoch FROM sent_at)::float8, recipients
FROM metering_notification_outbox WHERE org_id = %(org_id)s ORDER BY id DESC LIMIT %(limit)s

-- name: outbox_list
SELECT id, org_id, cycle_start - DATE '1970-01-01', threshold, kind, usage, status, recipients
FROM metering_notification_outbox ORDER BY id

-- name: outbox_attempt
UPDATE metering_notification_outbox SET attempts = attempts + 1, last_error = %(error)s
WHERE id = %(outbox_id)s

-- name: outbox_finish
UPDATE metering_notification_outbox
SET status = %(status)s, recipients = %(recipients)s, sent_at = to_timestamp(%(now)s),
    attempts = attempts + 1, last_error = NULL
WHERE id = %(outbox_id)s AND status = 'pending'

-- name: chunk_failure_insert
INSERT INTO metering_chunk_failures (job_id, failed_at, org_ids, error)
VALUES (%(job_id)s, to_timestamp(%(now)s), %(org_ids)s, %(error)s)

-- name: chunk_failures_open
SELECT id, org_ids FROM metering_chunk_failures WHERE resolved_at IS NULL ORDER BY id

-- name: chunk_failures_resolve
UPDATE metering_chunk_failures SET resolved_at = to_timestamp(%(now)s), resolved_by = %(job_id)s
WHERE resolved_at IS NULL AND id = ANY(%(ids)s::bigint[])

-- name: usage_by_project
-- The "sql" usage source: units per project and bucket (%(bucket)s seconds) in [start, end).
SELECT project_id, bucket, SUM(t)::bigint, SUM(o)::bigint, SUM(s)::bigint FROM (
    SELECT project_id,
           (floor(extract(epoch FROM timestamp) / %(bucket)s) * %(bucket)s)::bigint AS bucket,
           COUNT(*) AS t, 0 AS o, 0 AS s
    FROM metering_traces
    WHERE timestamp >= to_timestamp(%(start)s) AND timestamp < to_timestamp(%(end)s)
    GROUP BY 1, 2
    UNION ALL
    SELECT project_id, (floor(extract(epoch FROM start_time) / %(bucket)s) * %(bucket)s)::bigint,
           0, COUNT(*), 0
    FROM metering_observations
    WHERE start_time >= to_timestamp(%(start)s) AND start_time < to_timestamp(%(end)s)
    GROUP BY 1, 2
    UNION ALL
    SELECT project_id, (floor(extract(epoch FROM timestamp) / %(bucket)s) * %(bucket)s)::bigint,
           0, 0, COUNT(*)
    FROM metering_scores
    WHERE timestamp >= to_timestamp(%(start)s) AND timestamp < to_timestamp(%(end)s)
    GROUP BY 1, 2
) AS counted GROUP BY project_id, bucket

-- name: traces_insert_batch
INSERT INTO metering_traces (id, project_id, timestamp, name)
SELECT v.id, v.project_id, to_timestamp(v.ts), v.name
FROM unnest(%(id)s::bigint[], %(project_id)s::bigint[], %(timestamp)s::float8[], %(name)s::text[])
     AS v(id, project_id, ts, name)

-- name: observations_insert_batch
INSERT INTO metering_observations (id, trace_id, project_id, start_time, type)
SELECT v.id, v.trace_id, v.project_id, to_timestamp(v.ts), v.type
FROM unnest(%(id)s::bigint[], %(trace_id)s::bigint[], %(project_id)s::bigint[],
            %(start_time)s::float8[], %(type)s::text[]) AS v(id, trace_id, project_id, ts, type)

-- name: scores_insert_batch
INSERT INTO metering_scores (id, trace_id, project_id, timestamp, name, value)
SELECT v.id, v.trace_id, v.project_id, to_timestamp(v.ts), v.name, v.value
FROM unnest(%(id)s::bigint[], %(trace_id)s::bigint[], %(project_id)s::bigint[],
            %(timestamp)s::float8[], %(name)s::text[], %(value)s::float8[])
     AS v(id, trace_id, project_id, ts, name, value)

-- name: statement_timeout
SELECT set_config('statement_timeout', %(ms)s, true)

-- name: org_set_billing
UPDATE metering_organizations
SET subscription_status = %(subscription_status)s, plan_override = %(plan_override)s,
    external_billing = %(external_billing)s, plan = %(plan)s, updated_at = to_timestamp(%(now)s)
WHERE id = %(org_id)s

-- name: project_delete
UPDATE metering_projects SET deleted_at = to_timestamp(%(now)s)
WHERE id = %(project_id)s AND deleted_at IS NULL

-- name: outbox_sweep_due
-- Pending rows old enough that their first send job had its chance, not looked at recently.
SELECT id, sweeps FROM metering_notification_outbox
WHERE status = 'pending' AND created_at <= to_timestamp(%(settled)s)
  AND (next_sweep_at IS NULL OR next_sweep_at <= to_timestamp(%(now)s))
ORDER BY id LIMIT %(limit)s

-- name: outbox_sweep_mark
UPDATE metering_notification_outbox
SET sweeps = sweeps + %(added)s, next_sweep_at = to_timestamp(%(next_at)s)
WHERE id = %(outbox_id)s

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
