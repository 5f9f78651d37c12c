-- Observability: executions (written by triggers, see migration 0002), ledger and queue counts,
-- fleet events and anomalies. Instants are epoch seconds.

-- name: execution_count
-- Bucket i holds [since + i * bucket, since + (i + 1) * bucket) (a timeline's cells).
SELECT task, queue, schedule,
       CASE WHEN :bucket IS NULL THEN NULL
            ELSE CAST((started_at - :since) / :bucket AS INTEGER)
       END AS bucket,
       COUNT(*) AS executions,
       SUM(attempt > 1) AS retries,
       COUNT(DISTINCT job_id) AS jobs,
       COUNT(DISTINCT worker_id) AS workers,
       SUM(COALESCE(outcome IN ('retryable', 'failed'), 0)) AS failures,
       SUM(MAX(started_at - run_at, 0)) AS wait_seconds,
       SUM(COALESCE(outcome = 'released', 0)) AS lost
FROM oncely_executions
WHERE started_at > :since AND started_at <= :until
  AND (:task IS NULL OR task = :task)
GROUP BY task, queue, schedule, bucket
ORDER BY task, queue, schedule NULLS FIRST, bucket;

-- name: execution_count_overlaps
-- Attempts started in the window while an earlier attempt of the same task had not ended: one
-- pass in start order keeps the latest end seen so far (a running attempt never ends). Attempts
-- that started more than one window length before the window are not considered.
SELECT COUNT(*) AS overlaps FROM (
    SELECT started_at,
           MAX(COALESCE(ended_at, 1e18)) OVER (
               ORDER BY started_at, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS busy_until
    FROM oncely_executions
    WHERE task = :task AND started_at > :since - (:until - :since) AND started_at <= :until
)
WHERE started_at > :since AND busy_until > started_at;

-- name: execution_list
SELECT * FROM oncely_executions
WHERE (:job_id IS NULL OR job_id = :job_id)
  AND (:task IS NULL OR task = :task)
ORDER BY started_at DESC, id DESC
LIMIT :limit;

-- name: execution_list_durations
SELECT ended_at - started_at AS seconds FROM oncely_executions
WHERE task = :task AND outcome = 'succeeded' AND ended_at IS NOT NULL
ORDER BY started_at DESC, id DESC
LIMIT :limit;

-- name: ledger_count
SELECT schedule, outcome, COUNT(*) AS count, MIN(slot) AS first_slot, MAX(slot) AS last_slot
FROM oncely_slots
WHERE slot > :since AND slot <= :until
  AND (:schedule IS NULL OR schedule = :schedule)
GROUP BY schedule, outcome
ORDER BY schedule, outcome;

-- name: job_count_waiting
SELECT queue, task, COUNT(*) AS count, MIN(run_at) AS oldest_run_at FROM oncely_jobs
WHERE (state = 'scheduled' OR state = 'available' OR state = 'retryable') AND run_at <= :now
GROUP BY queue, task
ORDER BY queue, task;

-- name: event_insert
INSERT INTO oncely_events (name, at, job_id, task, subject, detail)
VALUES (:name, :at, :job_id, :task, :subject, :detail);

-- name: event_count_by_name
SELECT name, COUNT(*) AS count FROM oncely_events
WHERE at >= :since
GROUP BY name
ORDER BY name;

-- name: event_list
SELECT * FROM oncely_events
WHERE (:name IS NULL OR name = :name)
ORDER BY at DESC, id DESC
LIMIT :limit;

-- name: anomaly_raise
INSERT INTO oncely_anomalies (kind, subject, severity, summary, schedule, ratio, evidence, advice,
                              first_seen_at, last_seen_at)
VALUES (:kind, :subject, :severity, :summary, :schedule, :ratio, :evidence, :advice, :now, :now)
ON CONFLICT (kind, subject) WHERE resolved_at IS NULL DO UPDATE
SET severity = excluded.severity, summary = excluded.summary, schedule = excluded.schedule,
    ratio = excluded.ratio, evidence = excluded.evidence, advice = excluded.advice,
    last_seen_at = excluded.last_seen_at, occurrences = oncely_anomalies.occurrences + 1
RETURNING *;

-- name: anomaly_list
SELECT * FROM oncely_anomalies
WHERE (NOT :open_only OR resolved_at IS NULL)
ORDER BY last_seen_at DESC, id DESC
LIMIT :limit;

-- name: anomaly_get
SELECT * FROM oncely_anomalies WHERE id = :id;

-- name: anomaly_resolve
UPDATE oncely_anomalies SET resolved_at = :now
WHERE id = :id AND resolved_at IS NULL;

-- name: execution_prune
DELETE FROM oncely_executions WHERE id IN (
    SELECT id FROM oncely_executions
    WHERE started_at < :before AND ended_at IS NOT NULL
    ORDER BY started_at LIMIT :limit);

-- name: event_prune
DELETE FROM oncely_events WHERE id IN (
    SELECT id FROM oncely_events WHERE at < :before ORDER BY at LIMIT :limit);

-- name: anomaly_prune
DELETE FROM oncely_anomalies WHERE id IN (
    SELECT id FROM oncely_anomalies WHERE resolved_at < :before ORDER BY resolved_at LIMIT :limit);
