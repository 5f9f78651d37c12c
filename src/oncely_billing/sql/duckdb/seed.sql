-- The synthetic dataset of `oncely metering seed`, built inside DuckDB. Randomness comes from
-- hash(seed, ...) so the same seed gives the same data, whatever the number of threads.
-- Timestamps are naive UTC.

-- name: seed_setup
CREATE OR REPLACE TABLE seed_params AS
SELECT $seed::BIGINT AS seed, $orgs::BIGINT AS n_orgs, $end::TIMESTAMP AS end_ts,
       $days::INTEGER AS days, $end::TIMESTAMP - to_days($days::INTEGER) AS start_ts,
       $heavy_fraction::DOUBLE AS heavy_fraction;
CREATE OR REPLACE MACRO seed_u(s, a, b) AS
    (hash(s, a, b) % 1000000007)::DOUBLE / 1000000007.0;
CREATE OR REPLACE MACRO seed_u4(s, a, b, c) AS
    (hash(s, a, b, c) % 1000000007)::DOUBLE / 1000000007.0

-- name: seed_orgs
-- Anchor days cycle through 1..31 with the org id, so every day of the month is used; orgs are
-- created 1-36 months ago on a month that has their anchor day (4% are new, inside the window).
CREATE OR REPLACE TABLE seed_orgs AS
WITH base AS (
    SELECT i AS org_id, p.seed, p.end_ts, p.start_ts, p.heavy_fraction,
           1 + ((i - 1 + p.seed) % 31)::INTEGER AS dom,
           seed_u(p.seed, i, 1) AS r_billing, seed_u(p.seed, i, 2) AS r_active,
           seed_u(p.seed, i, 3) AS r_heavy, seed_u(p.seed, i, 4) AS r_v1,
           seed_u(p.seed, i, 5) AS r_v2, seed_u(p.seed, i, 6) AS r_age,
           seed_u(p.seed, i, 7) AS r_new, seed_u(p.seed, i, 8) AS r_time,
           seed_u(p.seed, i, 9) AS r_anchor, seed_u(p.seed, i, 10) AS r_growth,
           seed_u(p.seed, i, 11) AS r_name
    FROM seed_params p, range(1, p.n_orgs + 1) t(i)
), billing AS (
    SELECT *,
           CASE WHEN r_billing < 0.050 THEN 'active' WHEN r_billing < 0.060 THEN 'trialing'
                WHEN r_billing < 0.065 THEN 'past_due' WHEN r_billing < 0.100 THEN 'canceled'
           END AS subscription_status,
           CASE WHEN r_billing >= 0.100 AND r_billing < 0.110 THEN 'enterprise' END AS plan_override,
           CASE WHEN r_billing >= 0.110 AND r_billing < 0.120 THEN 'aws-marketplace'
           END AS external_billing,
           r_billing < 0.065 OR (r_billing >= 0.100 AND r_billing < 0.120) AS paid,
           CAST(date_trunc('month', end_ts) - to_months(1 + floor(r_age * 36)::INTEGER) AS DATE) AS m1
    FROM base
), created AS (
    SELECT *,
           CASE WHEN day(last_day(m1)) >= dom THEN m1
                ELSE CAST(m1 - to_months(1) AS DATE) END AS m
    FROM billing
), dated AS (
    SELECT *,
           CASE WHEN r_new < 0.04
                THEN end_ts - to_seconds(floor(r_new / 0.04 * 29 * 86400)::BIGINT)
                ELSE make_timestamp(year(m), month(m), dom, floor(r_time * 24)::BIGINT,
                                    floor(r_time * 1440)::BIGINT % 60, (r_time * 86400) % 60)
           END AS created_at
    FROM created
)
SELECT org_id,
       list_element(['Acme', 'Globex', 'Initech', 'Umbrella', 'Hooli', 'Stark', 'Wayne',
                     'Tyrell', 'Cyberdyne', 'Soylent', 'Aperture', 'Wonka', 'Vandelay',
                     'Pied Piper', 'Massive Dynamic', 'Oscorp'], 1 + floor(r_name * 16)::INTEGER)
           || ' ' || list_element(['Labs', 'AI', 'Analytics', 'Systems', 'Cloud', 'Health',
                                   'Robotics', 'Software'], 1 + floor(r_v2 * 8)::INTEGER)
           || ' ' || org_id::VARCHAR AS name,
       CASE WHEN plan_override IS NOT NULL THEN 'enterprise'
            WHEN subscription_status IN ('active', 'trialing', 'past_due')
                THEN CASE WHEN r_anchor < 0.7 THEN 'pro' ELSE 'team' END
            ELSE 'free' END AS plan,
       subscription_status, plan_override, external_billing,
       CASE WHEN subscription_status IS NOT NULL OR r_anchor < 0.25
            THEN 'cus_' || upper(substr(md5(seed::VARCHAR || ':' || org_id::VARCHAR), 1, 14))
       END AS stripe_customer_id,
       CASE WHEN subscription_status IS NOT NULL
            THEN least(created_at + to_days(floor(r_anchor * 400)::INTEGER), end_ts - to_days(1))
       END AS billing_cycle_anchor,
       created_at, paid,
       CASE WHEN r_active < 0.25 THEN 0.0
            WHEN r_heavy < heavy_fraction * (CASE WHEN paid THEN 8 ELSE 1 END)
                THEN 30000.0 * exp(r_v1 * ln(400000.0 / 30000.0))
            ELSE least(400000.0, 80.0 * exp(1.6 * sqrt(-2.0 * ln(greatest(r_v1, 1e-12)))
                                              * cos(2.0 * pi() * r_v2)))
       END AS monthly_units,
       (r_growth - 0.5) * 1.2 AS growth,
       1 + floor(r_heavy * 1000)::INTEGER % 3
         + CASE WHEN r_heavy < heavy_fraction * 8 THEN 2 ELSE 0 END AS n_projects,
       1 + floor(r_time * 4)::INTEGER AS n_members
FROM dated

-- name: seed_projects
-- Projects share their org's volume Zipf-style; 6% are deleted (half inside the window: their
-- earlier events exist but must not count).
CREATE OR REPLACE TABLE seed_projects AS
WITH raw AS (
    SELECT o.org_id * 10 + k AS project_id, o.org_id, k, o.monthly_units, o.growth,
           least(o.created_at + to_days(k * 3), p.end_ts - to_seconds(60)) AS created_at,
           seed_u(p.seed, o.org_id * 10 + k, 11) AS r_deleted,
           seed_u(p.seed, o.org_id * 10 + k, 12) AS r_when,
           p.end_ts, p.start_ts
    FROM seed_orgs o, seed_params p, range(o.n_projects) r(k)
)
SELECT project_id, org_id, 'project-' || (k + 1)::VARCHAR AS name, created_at,
       CASE WHEN r_deleted >= 0.06 THEN NULL
            WHEN r_when < 0.5
                THEN greatest(created_at, end_ts - to_seconds(floor(r_when * 2 * 20 * 86400)::BIGINT))
            ELSE greatest(created_at, start_ts - to_days(30)) END AS deleted_at,
       monthly_units / 30.0 * (1.0 / (k + 1)) / SUM(1.0 / (k + 1)) OVER (PARTITION BY org_id)
           AS daily_rate,
       growth
FROM raw

-- name: seed_members
SELECT o.org_id, 'user' || (k + 1)::VARCHAR || '@org' || o.org_id::VARCHAR || '.example.com',
       'User ' || (k + 1)::VARCHAR,
       CASE WHEN k = 0 THEN 'OWNER'
            WHEN k = 1 AND seed_u(p.seed, o.org_id, 30) < 0.5 THEN 'ADMIN'
            WHEN seed_u4(p.seed, o.org_id, k, 31) < 0.25 THEN 'VIEWER'
            ELSE 'MEMBER' END,
       epoch(o.created_at + to_days(k))
FROM seed_orgs o, seed_params p, range(o.n_members) r(k)
ORDER BY 1, 2

-- name: seed_orgs_rows
SELECT org_id, name, plan, subscription_status, plan_override, external_billing,
       stripe_customer_id, epoch(billing_cycle_anchor), epoch(created_at)
FROM seed_orgs ORDER BY org_id

-- name: seed_projects_rows
SELECT project_id, org_id, name, epoch(created_at), epoch(deleted_at)
FROM seed_projects ORDER BY project_id

-- name: seed_window
-- How many events each live project produces in [$lo, $hi), split over the three tables.
CREATE OR REPLACE TEMP TABLE seed_window AS
WITH spans AS (
    SELECT s.project_id, s.daily_rate, s.growth, p.seed, p.start_ts, p.days,
           greatest($lo::TIMESTAMP, s.created_at) AS lo,
           least($hi::TIMESTAMP, coalesce(s.deleted_at, $hi::TIMESTAMP)) AS hi,
           epoch($lo::TIMESTAMP)::BIGINT AS window_key
    FROM seed_projects s, seed_params p
    WHERE s.daily_rate > 0
), expected AS (
    SELECT *, epoch(hi) - epoch(lo) AS span_seconds,
           daily_rate * (epoch(hi) - epoch(lo)) / 86400.0
             * (1.0 + growth * ((epoch(lo) - epoch(start_ts)) / (days * 86400.0) - 0.5))
             * CASE WHEN dayofweek(lo) IN (0, 6) THEN 0.7 ELSE 1.1 END
             * (0.6 + 0.8 * seed_u4(seed, project_id, window_key, 21)) AS mean_events
    FROM spans WHERE hi > lo
), counted AS (
    SELECT *, floor(mean_events + seed_u4(seed, project_id, window_key, 22))::BIGINT AS n
    FROM expected
), split AS (
    SELECT *, floor(n * 0.3 + seed_u4(seed, project_id, window_key, 23))::BIGINT AS n_traces,
              floor(n * 0.1 + seed_u4(seed, project_id, window_key, 24))::BIGINT AS n_scores
    FROM counted WHERE n > 0
)
SELECT project_id, seed, lo, window_key, CAST(span_seconds * 1000000 AS BIGINT) AS span_us,
       n_traces, greatest(n - n_traces - n_scores, 0) AS n_observations, n_scores
FROM split

-- name: seed_insert_traces
INSERT INTO traces
SELECT (hash(w.seed, w.project_id, w.window_key, k, 1) >> 1)::BIGINT, w.project_id,
       w.lo + to_microseconds(floor(seed_u4(w.seed, w.project_id, w.window_key * 8 + 1, k)
                                     * w.span_us)::BIGINT),
       list_element(['chat', 'rag-query', 'agent-run', 'summarize'], 1 + (k % 4)::INTEGER)
FROM seed_window w, range(w.n_traces) r(k)

-- name: seed_insert_observations
INSERT INTO observations
SELECT (hash(w.seed, w.project_id, w.window_key, k, 2) >> 1)::BIGINT,
       CASE WHEN w.n_traces > 0 THEN (hash(w.seed, w.project_id, w.window_key,
            (k % w.n_traces), 1) >> 1)::BIGINT END,
       w.project_id,
       w.lo + to_microseconds(floor(seed_u4(w.seed, w.project_id, w.window_key * 8 + 2, k)
                                     * w.span_us)::BIGINT),
       list_element(['GENERATION', 'SPAN', 'EVENT'], 1 + (k % 3)::INTEGER)
FROM seed_window w, range(w.n_observations) r(k)

-- name: seed_insert_scores
INSERT INTO scores
SELECT (hash(w.seed, w.project_id, w.window_key, k, 3) >> 1)::BIGINT,
       CASE WHEN w.n_traces > 0 THEN (hash(w.seed, w.project_id, w.window_key,
            (k % w.n_traces), 1) >> 1)::BIGINT END,
       w.project_id,
       w.lo + to_microseconds(floor(seed_u4(w.seed, w.project_id, w.window_key * 8 + 3, k)
                                     * w.span_us)::BIGINT),
       'quality', seed_u4(w.seed, w.project_id, w.window_key, k)
FROM seed_window w, range(w.n_scores) r(k)

-- name: seed_summary
SELECT (SELECT count(*) FROM seed_orgs), (SELECT count(*) FROM seed_projects),
       (SELECT count(*) FROM seed_projects WHERE deleted_at IS NOT NULL),
       (SELECT count(*) FROM seed_orgs WHERE paid),
       (SELECT count(DISTINCT day(coalesce(billing_cycle_anchor, created_at))) FROM seed_orgs),
       (SELECT count(*) FROM traces), (SELECT count(*) FROM observations),
       (SELECT count(*) FROM scores)

-- name: events_for_copy_traces
SELECT id, project_id, epoch(timestamp), name FROM traces ORDER BY timestamp

-- name: events_for_copy_observations
SELECT id, trace_id, project_id, epoch(start_time), type FROM observations ORDER BY start_time

-- name: events_for_copy_scores
SELECT id, trace_id, project_id, epoch(timestamp), name, value FROM scores ORDER BY timestamp

-- name: export_parquet
COPY {table} TO '{path}' (FORMAT parquet)

-- name: events_count
SELECT (SELECT count(*) FROM traces) + (SELECT count(*) FROM observations)
       + (SELECT count(*) FROM scores)

-- name: checkpoint
CHECKPOINT
