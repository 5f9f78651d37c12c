-- The claim of limited queues in one round trip (oncely.store.postgres.limited): one transaction
-- of three statements sent together. The first takes the shared controls lock, the second locks
-- the rows of the controls that limit this claim (so claimers of limited scopes take turns, for
-- the length of the third statement and the commit), and the third, whose snapshot is taken
-- after those locks were granted, counts what the controls are measured against and starts the
-- jobs they admit. Each statement depends on no result of the one before it.

-- name: control_lock_for_claim
-- The active controls that may apply to a claim over queues (NULL: every queue), the limiting
-- ones locked in sorted order; returned as they stand once the locks are held.
SELECT * FROM oncely_controls
WHERE (paused OR max_running IS NOT NULL OR max_per_key IS NOT NULL OR rate_limit IS NOT NULL)
  AND (kind = 'task' OR %(queues)s::text[] IS NULL OR name = ANY(%(queues)s::text[]))
ORDER BY kind, name
FOR UPDATE;

-- name: control_read_usage_for_claim
-- What control_read_usage reads, for the controls control_lock_for_claim returned (the ring
-- entries of each rated scope's next min(limit, rate_limit) starts): the claim's gate is
-- rebuilt from it to name the scopes that hold jobs back.
WITH control AS (
    SELECT * FROM oncely_controls
    WHERE (paused OR max_running IS NOT NULL OR max_per_key IS NOT NULL OR rate_limit IS NOT NULL)
      AND (kind = 'task' OR %(queues)s::text[] IS NULL OR name = ANY(%(queues)s::text[]))
)
SELECT 'queue' AS what, j.queue AS name, COUNT(*) AS count, NULL::timestamptz AS at
FROM oncely_jobs AS j
WHERE j.state = 'running'
  AND j.queue IN (SELECT name FROM control WHERE kind = 'queue' AND max_running IS NOT NULL)
GROUP BY j.queue
UNION ALL
SELECT 'ring', r.scope, r.slot, r.at
FROM (SELECT c.kind || ':' || c.name AS scope, slot.n AS slot,
             -- a subquery per slot: one index probe each, whatever the size of the ring
             (SELECT s.started_at FROM oncely_starts AS s
              WHERE s.scope = c.kind || ':' || c.name AND s.slot = slot.n) AS at
      FROM control AS c
      CROSS JOIN LATERAL (
          SELECT ((c.rate_seq + step) %% c.rate_limit)::integer AS n
          FROM generate_series(0, LEAST(%(limit)s, c.rate_limit) - 1) AS step) AS slot
      WHERE c.rate_limit IS NOT NULL AND c.rate_window IS NOT NULL) AS r
WHERE r.at IS NOT NULL
UNION ALL
SELECT 'key', j.concurrency_key, COUNT(*), NULL
FROM oncely_jobs AS j
WHERE j.state = 'running' AND j.concurrency_key IS NOT NULL
  -- "IS TRUE": a filter on the running jobs of oncely_jobs_running_key, never a scan of the
  -- task's every job through oncely_jobs_task that stale statistics can make look cheaper
  AND (j.task IN (SELECT name FROM control WHERE kind = 'task' AND max_per_key IS NOT NULL))
      IS TRUE
GROUP BY j.concurrency_key;

-- name: job_claim_limited
-- Starts, in claim order, the due jobs without a singleton key that every control lets start.
-- Each control is a count of room: a queue's (max_running less its running jobs, and the free
-- slots at the head of its rate ring), a task's (its rate ring) and a concurrency key's
-- (max_per_key less its running jobs). Each queue is read along oncely_jobs_claim, at most as
-- many jobs as it has room for (a queue without room is not read at all); a task's and a key's
-- jobs are admitted while their place among the candidates is within the room. That is the walk
-- of oncely.store.controls.Gate as long as no job is under two controls at once; when one may be
-- (a task control beside a limiting queue control, a task with both a rate and max_per_key), or
-- a due singleton job or a slot job with a catch-up policy waits, the statement starts nothing
-- and returns claim_blocked, and the caller runs the full claim. Starts of rated scopes are
-- written into their rings and the rings moved on. Always returns at least one row.
WITH RECURSIVE control AS (
    SELECT kind, name, paused, max_running, max_per_key, rate_limit, rate_window, rate_seq,
           kind || ':' || name AS scope
    FROM oncely_controls
    WHERE (paused OR max_running IS NOT NULL OR max_per_key IS NOT NULL OR rate_limit IS NOT NULL)
      AND (kind = 'task' OR %(queues)s::text[] IS NULL OR name = ANY(%(queues)s::text[]))
), gate AS (
    SELECT EXISTS (SELECT 1 FROM control
                   WHERE kind = 'task' AND max_per_key IS NOT NULL AND rate_limit IS NOT NULL)
        OR (EXISTS (SELECT 1 FROM control WHERE kind = 'task')
            AND EXISTS (SELECT 1 FROM control
                        WHERE kind = 'queue' AND NOT paused
                          AND (max_running IS NOT NULL OR rate_limit IS NOT NULL)))
        OR EXISTS (
               SELECT 1 FROM oncely_jobs AS j
               LEFT JOIN oncely_leases AS l ON l.key = j.singleton_key
               WHERE j.state IN ('scheduled', 'available', 'retryable')
                 AND j.singleton_key IS NOT NULL AND j.run_at <= %(now)s
                 AND (%(queues)s::text[] IS NULL OR j.queue = ANY(%(queues)s::text[]))
                 AND (%(tasks)s::text[] IS NULL OR j.task = ANY(%(tasks)s::text[]))
                 AND (l.owner IS NULL OR l.expires_at IS NULL OR l.expires_at <= %(now)s
                      OR (j.overlap = 'skip' AND j.schedule IS NOT NULL AND j.attempt = 0
                          AND (j.state <> 'retryable' OR j.rescues > 0))))
        OR EXISTS (
               SELECT 1 FROM oncely_jobs AS j
               WHERE j.state IN ('scheduled', 'available') AND j.schedule IS NOT NULL
                 AND j.attempt = 0 AND j.singleton_key IS NULL AND j.run_at <= %(now)s
                 AND j.catch_up IN ('none', 'latest')
                 AND (%(queues)s::text[] IS NULL OR j.queue = ANY(%(queues)s::text[]))
                 AND (%(tasks)s::text[] IS NULL OR j.task = ANY(%(tasks)s::text[])))
        AS blocked
), rate_room AS (
    -- the starts a rated scope may make now: the free slots at the head of its ring
    SELECT c.kind, c.name,
           COALESCE((SELECT MIN(step.n)
                     FROM generate_series(0, LEAST(%(limit)s, c.rate_limit) - 1) AS step(n)
                     WHERE (SELECT s.started_at FROM oncely_starts AS s  -- an index probe each
                            WHERE s.scope = c.scope
                              AND s.slot = ((c.rate_seq + step.n) %% c.rate_limit)::integer)
                           > %(now)s - make_interval(secs => c.rate_window)),
                    LEAST(%(limit)s, c.rate_limit)) AS room
    FROM control AS c
    WHERE c.rate_limit IS NOT NULL AND c.rate_window IS NOT NULL
), queue_room AS (
    SELECT c.name AS queue,
           CASE WHEN c.paused THEN 0
                ELSE LEAST(COALESCE(c.max_running - (SELECT COUNT(*) FROM oncely_jobs AS j
                                                     WHERE j.state = 'running'
                                                       AND j.queue = c.name),
                                    %(limit)s),
                           COALESCE(r.room, %(limit)s))
           END AS room
    FROM control AS c
    LEFT JOIN rate_room AS r ON r.kind = c.kind AND r.name = c.name
    WHERE c.kind = 'queue'
), task_room AS (
    SELECT r.name AS task, r.room FROM rate_room AS r WHERE r.kind = 'task'
), key_room AS (
    -- (the task's max_per_key less the key's running jobs; "IS TRUE" as in the usage above)
    SELECT j.concurrency_key AS key,
           MAX((SELECT c.max_per_key FROM control AS c
                WHERE c.kind = 'task' AND c.name = j.task)) - COUNT(*) AS room
    FROM oncely_jobs AS j
    WHERE j.state = 'running' AND j.concurrency_key IS NOT NULL
      AND (j.task IN (SELECT name FROM control WHERE kind = 'task' AND max_per_key IS NOT NULL))
          IS TRUE
    GROUP BY j.concurrency_key
), waiting(queue) AS (
    -- the queues with waiting jobs (one index probe each), unless the claim names its queues
    SELECT MIN(queue) FROM oncely_jobs
    WHERE state IN ('scheduled', 'available', 'retryable') AND %(queues)s::text[] IS NULL
    UNION ALL
    SELECT (SELECT MIN(queue) FROM oncely_jobs
            WHERE state IN ('scheduled', 'available', 'retryable') AND queue > waiting.queue)
    FROM waiting WHERE waiting.queue IS NOT NULL
), scan AS (
    SELECT w.queue, LEAST(COALESCE(q.room, %(limit)s), %(limit)s) AS room
    FROM (SELECT queue FROM waiting WHERE queue IS NOT NULL
          UNION
          SELECT unnest(%(queues)s::text[])) AS w
    LEFT JOIN queue_room AS q ON q.queue = w.queue
    WHERE NOT (SELECT blocked FROM gate)
), candidate AS (
    SELECT c.*
    FROM scan CROSS JOIN LATERAL (
        SELECT j.id, j.queue, j.task, j.concurrency_key, j.priority, j.run_at
        FROM oncely_jobs AS j
        WHERE j.queue = scan.queue
          AND j.state IN ('scheduled', 'available', 'retryable')
          AND j.run_at <= %(now)s
          AND j.singleton_key IS NULL
          AND (%(tasks)s::text[] IS NULL OR j.task = ANY(%(tasks)s::text[]))
          AND j.task NOT IN (SELECT task FROM task_room WHERE room <= 0)
          AND (j.concurrency_key IS NULL
               OR j.concurrency_key NOT IN (SELECT key FROM key_room WHERE room <= 0))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT scan.room
        FOR UPDATE OF j SKIP LOCKED) AS c
    WHERE scan.room > 0
), ranked AS (
    SELECT c.*,
           row_number() OVER (PARTITION BY c.task
                              ORDER BY c.priority DESC, c.run_at, c.id) AS task_place,
           row_number() OVER (PARTITION BY c.concurrency_key
                              ORDER BY c.priority DESC, c.run_at, c.id) AS key_place
    FROM candidate AS c
), admitted AS (
    SELECT r.id
    FROM ranked AS r
    LEFT JOIN task_room AS t ON t.task = r.task
    LEFT JOIN control AS kc
      ON kc.kind = 'task' AND kc.name = r.task AND kc.max_per_key IS NOT NULL
    LEFT JOIN key_room AS k ON k.key = r.concurrency_key
    WHERE (t.room IS NULL OR r.task_place <= t.room)
      AND (r.concurrency_key IS NULL OR kc.name IS NULL
           OR r.key_place <= COALESCE(k.room, kc.max_per_key))
    ORDER BY r.priority DESC, r.run_at, r.id
    LIMIT %(limit)s
), started AS (
    UPDATE oncely_jobs AS j
    SET state = 'running', attempt = j.attempt + 1, lease_owner = %(owner)s,
        worked_by = %(owner)s, execution_id = nextval('oncely_executions_id_seq'),
        lease_expires_at = %(lease_expires_at)s, fence = j.fence + 1, started_at = %(now)s
    FROM admitted AS a
    WHERE j.id = a.id
    RETURNING j.*
), ring AS (
    -- each start of a rated scope takes the next slot of the scope's ring, in claim order
    SELECT c.kind, c.name, c.scope, s.id AS job_id,
           ((c.rate_seq + row_number() OVER (PARTITION BY c.scope
                                              ORDER BY s.priority DESC, s.run_at, s.id) - 1)
            %% c.rate_limit)::integer AS slot
    FROM started AS s
    JOIN control AS c
      ON c.rate_limit IS NOT NULL AND c.rate_window IS NOT NULL
     AND ((c.kind = 'queue' AND c.name = s.queue) OR (c.kind = 'task' AND c.name = s.task))
), logged AS (
    INSERT INTO oncely_starts AS s (scope, slot, started_at, job_id)
    SELECT scope, slot, %(now)s, job_id FROM ring
    ON CONFLICT (scope, slot) DO UPDATE
    SET started_at = excluded.started_at, job_id = excluded.job_id
), advanced AS (
    UPDATE oncely_controls AS c SET rate_seq = c.rate_seq + a.count
    FROM (SELECT kind, name, COUNT(*) AS count FROM ring GROUP BY kind, name) AS a
    WHERE c.kind = a.kind AND c.name = a.name
)
SELECT (SELECT blocked FROM gate) AS claim_blocked, s.*
FROM (SELECT 1) AS one LEFT JOIN started AS s ON true;
