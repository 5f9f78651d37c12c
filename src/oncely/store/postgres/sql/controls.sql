-- Queue controls: declarations, pause, and what a claim counts against them (see store/controls.py).
-- The controls lock is an advisory lock per schema: every claim holds it shared for its whole
-- transaction, declarations and pauses take it exclusively, so a change waits for the claims in
-- flight and every claim after it sees it.

-- name: control_claim_lock
-- A full claim's first statement: the shared controls lock. The controls are read by the next
-- statement, whose snapshot is taken after the lock was granted, so it sees a pause or limit
-- committed while this claim waited.
SELECT pg_advisory_xact_lock_shared(hashtextextended(current_schema() || '.oncely_controls', 0));

-- name: control_list_for_claim
SELECT * FROM oncely_controls
WHERE paused OR max_running IS NOT NULL OR max_per_key IS NOT NULL OR rate_limit IS NOT NULL;

-- name: control_lock_exclusive
SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '.oncely_controls', 0));

-- name: control_lock_rows
-- Claimers of limited scopes take turns here; sorted, so they cannot deadlock one another.
-- Returns each rate ring's position as the previous holder left it.
SELECT kind, name, rate_seq FROM oncely_controls
WHERE (kind = 'queue' AND name = ANY(%(queues)s::text[]))
   OR (kind = 'task' AND name = ANY(%(tasks)s::text[]))
ORDER BY kind, name
FOR UPDATE;

-- name: control_list
SELECT * FROM oncely_controls ORDER BY kind, name;

-- name: control_get
SELECT * FROM oncely_controls WHERE kind = %(kind)s AND name = %(name)s;

-- name: control_insert
INSERT INTO oncely_controls (kind, name, max_running, max_per_key, rate_limit, rate_window,
                             retention, spec_hash, declared_at, updated_at)
VALUES (%(kind)s, %(name)s, %(max_running)s, %(max_per_key)s, %(rate_limit)s, %(rate_window)s,
        %(retention)s::jsonb, %(spec_hash)s, %(now)s, %(now)s)
ON CONFLICT (kind, name) DO NOTHING
RETURNING kind;

-- name: control_update
-- A changed declaration; the pause flag is the command line's and stays as it is.
UPDATE oncely_controls
SET max_running = %(max_running)s, max_per_key = %(max_per_key)s, rate_limit = %(rate_limit)s,
    rate_window = %(rate_window)s, retention = %(retention)s::jsonb, spec_hash = %(spec_hash)s,
    rate_seq = CASE WHEN rate_limit IS NOT DISTINCT FROM %(rate_limit)s::integer
                     AND rate_window IS NOT DISTINCT FROM %(rate_window)s::float8
                    THEN rate_seq ELSE 0 END,
    declared_at = %(now)s, updated_at = %(now)s
WHERE kind = %(kind)s AND name = %(name)s;

-- name: rate_ring_clear
-- A changed rate limit starts from an empty ring (slots are numbered modulo the limit).
DELETE FROM oncely_starts WHERE scope = %(scope)s;

-- name: control_declare
UPDATE oncely_controls SET declared_at = %(now)s WHERE kind = %(kind)s AND name = %(name)s;

-- name: control_pause
INSERT INTO oncely_controls (kind, name, paused, updated_at)
VALUES ('queue', %(name)s, %(paused)s, %(now)s)
ON CONFLICT (kind, name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at
RETURNING *;

-- name: control_read_usage
-- Everything a gate counts, in one statement (after control_lock_rows, so it sees what the
-- previous holder of those rows committed): running jobs per queue, the rate rings' entries in
-- the slots the next starts would take, running jobs per concurrency key.
-- (Each part runs only when asked for something: an empty array skips it.)
SELECT 'queue' AS what, queue AS name, COUNT(*) AS count, NULL::timestamptz AS at
FROM oncely_jobs
WHERE state = 'running' AND queue = ANY(%(queues)s::text[])
  AND cardinality(%(queues)s::text[]) > 0
GROUP BY queue
UNION ALL
SELECT 'ring', s.scope, s.slot, s.started_at
FROM unnest(%(ring_scopes)s::text[], %(ring_slots)s::integer[]) AS r(scope, slot)
JOIN oncely_starts AS s ON s.scope = r.scope AND s.slot = r.slot
UNION ALL
SELECT 'key', concurrency_key, COUNT(*), NULL
FROM oncely_jobs
WHERE state = 'running' AND concurrency_key IS NOT NULL
  AND (task = ANY(%(tasks)s::text[]) OR concurrency_key = ANY(%(keys)s::text[]))
  AND cardinality(%(tasks)s::text[]) + cardinality(%(keys)s::text[]) > 0
GROUP BY concurrency_key;

-- name: rate_ring_log
-- Writes the claim's starts into their rings' slots and moves the rings on.
WITH logged AS (
    INSERT INTO oncely_starts AS s (scope, slot, started_at, job_id)
    SELECT e.scope, e.slot, %(now)s, e.job_id
    FROM unnest(%(scopes)s::text[], %(slots)s::integer[], %(job_ids)s::bigint[])
         AS e(scope, slot, job_id)
    ON CONFLICT (scope, slot) DO UPDATE
    SET started_at = excluded.started_at, job_id = excluded.job_id
)
UPDATE oncely_controls AS c SET rate_seq = c.rate_seq + a.count
FROM unnest(%(kinds)s::text[], %(names)s::text[], %(counts)s::bigint[]) AS a(kind, name, count)
WHERE c.kind = a.kind AND c.name = a.name;

-- name: job_list_limited_candidates
-- Due waiting jobs of limited queues and tasks, in claim order, locked (SKIP LOCKED) with their
-- singleton key's lease as it stands. Each queue to look in is read along oncely_jobs_claim in
-- claim order (a LATERAL scan per queue, so a backlog is never sorted whole): the limited queues
-- that have room, and, when tasks are limited, every other queue with waiting jobs for those
-- tasks' jobs. Tasks and keys without room are left out, and so are jobs of a held singleton key
-- that would only wait.
WITH RECURSIVE waiting(queue) AS (
    SELECT MIN(queue) FROM oncely_jobs
    WHERE state IN ('scheduled', 'available', 'retryable')
      AND cardinality(%(limited_tasks)s::text[]) > 0
    UNION ALL
    SELECT (SELECT MIN(queue) FROM oncely_jobs
            WHERE state IN ('scheduled', 'available', 'retryable') AND queue > waiting.queue)
    FROM waiting WHERE waiting.queue IS NOT NULL
), scan(queue, whole) AS (
    SELECT name, TRUE FROM unnest(%(limited_queues)s::text[]) AS name
    WHERE name <> ALL(%(blocked_queues)s::text[])
    UNION ALL
    SELECT queue, FALSE FROM waiting
    WHERE queue IS NOT NULL AND queue <> ALL(%(limited_queues)s::text[])
), candidate AS (
    SELECT c.id, c.priority, c.run_at
    FROM scan CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM oncely_jobs AS j
        WHERE j.queue = scan.queue
          AND j.state IN ('scheduled', 'available', 'retryable')
          AND j.run_at <= %(now)s
          AND (scan.whole OR j.task = ANY(%(limited_tasks)s::text[]))
          AND (%(queues)s::text[] IS NULL OR j.queue = ANY(%(queues)s::text[]))
          AND (%(tasks)s::text[] IS NULL OR j.task = ANY(%(tasks)s::text[]))
          AND j.task <> ALL(%(blocked_tasks)s::text[])
          AND (j.concurrency_key IS NULL OR j.concurrency_key <> ALL(%(blocked_keys)s::text[]))
          AND (j.singleton_key IS NULL
               OR (j.overlap = 'skip' AND j.schedule IS NOT NULL AND j.attempt = 0
                   AND (j.state <> 'retryable' OR j.rescues > 0))
               OR NOT EXISTS (SELECT 1 FROM oncely_leases AS l
                              WHERE l.key = j.singleton_key AND l.owner IS NOT NULL
                                AND l.expires_at > %(now)s))
          AND (%(after_id)s::bigint IS NULL
               OR (-j.priority, j.run_at, j.id)
                  > (-%(after_priority)s::integer, %(after_run_at)s::timestamptz,
                     %(after_id)s::bigint))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT %(page)s) AS c
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT %(page)s
)
SELECT j.id, j.priority, j.run_at, j.queue, j.task, j.concurrency_key, j.singleton_key,
       j.schedule, j.slot,
       (j.singleton_key IS NOT NULL AND j.overlap = 'skip' AND j.schedule IS NOT NULL
        AND j.attempt = 0 AND (j.state <> 'retryable' OR j.rescues > 0)
        AND NOT COALESCE(l.owner IS NOT NULL AND l.expires_at > %(now)s
                         AND l.expires_at < %(overdue_before)s, false)) AS skippable,
       (l.owner IS NOT NULL AND l.expires_at > %(now)s) AS key_held,
       l.job_id AS key_holder
FROM oncely_jobs AS j
LEFT JOIN oncely_leases AS l ON l.key = j.singleton_key
WHERE j.id = ANY(ARRAY(SELECT id FROM candidate))  -- by primary key, whatever the statistics
  AND j.state IN ('scheduled', 'available', 'retryable')
ORDER BY j.priority DESC, j.run_at, j.id
FOR UPDATE OF j SKIP LOCKED;

-- name: job_claim_start_ids
-- Limited jobs without a singleton key, admitted by the gate: each advances its own fence.
UPDATE oncely_jobs AS j
SET state = 'running', attempt = j.attempt + 1, lease_owner = %(owner)s,
    worked_by = %(owner)s, execution_id = nextval('oncely_executions_id_seq'),
    lease_expires_at = %(lease_expires_at)s, fence = j.fence + 1, started_at = %(now)s
WHERE j.id = ANY(%(job_ids)s::bigint[])
RETURNING j.*;
