-- Observability: executions (oncely_attempts: a job's latest attempt on its row, earlier ones
-- in oncely_executions, see migration 0011), ledger and queue counts, fleet events and
-- anomalies.

-- name: execution_count
-- Bucket i holds [since + i * bucket, since + (i + 1) * bucket) (a timeline's cells).
SELECT task, queue, schedule,
       CASE WHEN %(bucket)s::float8 IS NULL THEN NULL
            ELSE floor(extract(epoch FROM started_at - %(since)s::timestamptz)::float8
                       / %(bucket)s::float8)::int
       END AS bucket,
       COUNT(*) AS executions,
       COUNT(*) FILTER (WHERE attempt > 1) AS retries,
       COUNT(DISTINCT job_id) AS jobs,
       COUNT(DISTINCT worker_id) AS workers,
       COUNT(*) FILTER (WHERE outcome IN ('retryable', 'failed')) AS failures,
       COALESCE(SUM(GREATEST(extract(epoch FROM started_at - run_at)::float8, 0)), 0)
           AS wait_seconds,
       COUNT(*) FILTER (WHERE outcome = 'released') AS lost
FROM oncely_attempts
WHERE started_at > %(since)s AND started_at <= %(until)s
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
GROUP BY task, queue, schedule, 4
ORDER BY task, queue, schedule NULLS FIRST, 4;

-- name: execution_count_overlaps
-- Attempts started in the window while an earlier attempt of the same task had not ended: one
-- pass in start order keeps the latest end seen so far (a running attempt never ends). Attempts
-- that started more than one window length before the window are not considered.
SELECT COUNT(*) AS overlaps FROM (
    SELECT started_at,
           MAX(COALESCE(ended_at, 'infinity'::timestamptz)) OVER (
               ORDER BY started_at, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS busy_until
    FROM oncely_attempts
    WHERE task = %(task)s
      AND started_at > %(since)s::timestamptz - (%(until)s::timestamptz - %(since)s::timestamptz)
      AND started_at <= %(until)s
) AS runs
WHERE started_at > %(since)s AND busy_until > started_at;

-- name: execution_list
-- The newest of each part, then the newest of both: each part is read in index order and stops
-- after LIMIT rows (through the union view the planner sorted every job's attempt).
SELECT * FROM (
    (SELECT * FROM oncely_executions
     WHERE (%(job_id)s::bigint IS NULL OR job_id = %(job_id)s::bigint)
       AND (%(task)s::text IS NULL OR task = %(task)s::text)
     ORDER BY started_at DESC, id DESC
     LIMIT %(limit)s)
    UNION ALL
    (SELECT * FROM oncely_attempts_latest
     WHERE (%(job_id)s::bigint IS NULL OR job_id = %(job_id)s::bigint)
       AND (%(task)s::text IS NULL OR task = %(task)s::text)
     ORDER BY started_at DESC, id DESC
     LIMIT %(limit)s)
) AS attempts
ORDER BY started_at DESC, id DESC
LIMIT %(limit)s;

-- name: execution_list_durations
SELECT seconds FROM (
    (SELECT started_at, id, extract(epoch FROM ended_at - started_at)::float8 AS seconds
     FROM oncely_executions
     WHERE task = %(task)s AND outcome = 'succeeded' AND ended_at IS NOT NULL
     ORDER BY started_at DESC, id DESC
     LIMIT %(limit)s)
    UNION ALL
    (SELECT started_at, id, extract(epoch FROM ended_at - started_at)::float8 AS seconds
     FROM oncely_attempts_latest
     WHERE task = %(task)s AND outcome = 'succeeded' AND ended_at IS NOT NULL
     ORDER BY started_at DESC, id DESC
     LIMIT %(limit)s)
) AS runs
ORDER BY started_at DESC, id DESC
LIMIT %(limit)s;

-- name: ledger_count
SELECT schedule, outcome, COUNT(*) AS count, MIN(slot) AS first_slot, MAX(slot) AS last_slot
FROM oncely_slots
WHERE slot > %(since)s AND slot <= %(until)s
  AND (%(schedule)s::text IS NULL OR schedule = %(schedule)s::text)
GROUP BY schedule, outcome
ORDER BY schedule, outcome;

-- name: job_count_waiting
SELECT queue, task, COUNT(*) AS count, MIN(run_at) AS oldest_run_at FROM oncely_jobs
WHERE state IN ('scheduled', 'available', 'retryable') AND run_at <= %(now)s
GROUP BY queue, task
ORDER BY queue, task;

-- name: event_insert
INSERT INTO oncely_events (name, at, job_id, task, subject, detail)
VALUES (%(name)s, %(at)s, %(job_id)s, %(task)s, %(subject)s, %(detail)s::jsonb);

-- name: event_count_by_name
SELECT name, COUNT(*) AS count FROM oncely_events
WHERE at >= %(since)s
GROUP BY name
ORDER BY name;

-- name: event_list
SELECT * FROM oncely_events
WHERE (%(name)s::text IS NULL OR name = %(name)s::text)
ORDER BY at DESC, id DESC
LIMIT %(limit)s;

-- name: anomaly_raise
INSERT INTO oncely_anomalies AS a (kind, subject, severity, summary, schedule, ratio, evidence,
                                   advice, first_seen_at, last_seen_at)
VALUES (%(kind)s, %(subject)s, %(severity)s, %(summary)s, %(schedule)s, %(ratio)s,
        %(evidence)s::jsonb, %(advice)s, %(now)s, %(now)s)
ON CONFLICT (kind, subject) WHERE resolved_at IS NULL DO UPDATE
SET severity = excluded.severity, summary = excluded.summary, schedule = excluded.schedule,
    ratio = excluded.ratio, evidence = excluded.evidence, advice = excluded.advice,
    last_seen_at = excluded.last_seen_at, occurrences = a.occurrences + 1
RETURNING *;

-- name: anomaly_list
SELECT * FROM oncely_anomalies
WHERE (NOT %(open_only)s OR resolved_at IS NULL)
ORDER BY last_seen_at DESC, id DESC
LIMIT %(limit)s;

-- name: anomaly_get
SELECT * FROM oncely_anomalies WHERE id = %(id)s;

-- name: anomaly_resolve
UPDATE oncely_anomalies SET resolved_at = %(now)s
WHERE id = %(id)s AND resolved_at IS NULL;

-- name: execution_prune
DELETE FROM oncely_executions WHERE id IN (
    SELECT id FROM oncely_executions
    WHERE started_at < %(before)s AND ended_at IS NOT NULL
    ORDER BY started_at LIMIT %(limit)s);

-- name: event_prune
DELETE FROM oncely_events WHERE id IN (
    SELECT id FROM oncely_events WHERE at < %(before)s ORDER BY at LIMIT %(limit)s);

-- name: anomaly_prune
DELETE FROM oncely_anomalies WHERE id IN (
    SELECT id FROM oncely_anomalies WHERE resolved_at < %(before)s
    ORDER BY resolved_at LIMIT %(limit)s);
