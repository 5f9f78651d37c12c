-- Jobs: insert, read, human actions (cancel, retry), rescue listing, checkpoints, pruning.
-- Every instant is a parameter: no query reads the server's clock.

-- name: job_insert
-- Any unique conflict (an unfinished job holding the unique key, a job holding the slot) inserts
-- nothing; the caller then reads the job that won. A new available job wakes idle workers when
-- its transaction commits. Only the id comes back: the caller builds the job from what it wrote.
WITH job AS (
    INSERT INTO oncely_jobs (queue, task, args, state, priority, max_attempts, run_at,
                             created_at, unique_key, schedule, slot, singleton_key, overlap,
                             timeout, concurrency_key, catch_up, misfire_grace)
    VALUES (%(queue)s, %(task)s, %(args)s::jsonb, %(state)s, %(priority)s, %(max_attempts)s,
            %(run_at)s, %(created_at)s, %(unique_key)s, %(schedule)s, %(slot)s,
            %(singleton_key)s, %(overlap)s, %(timeout)s, %(concurrency_key)s, %(catch_up)s,
            %(misfire_grace)s)
    ON CONFLICT DO NOTHING
    RETURNING id, state, queue
)
SELECT job.id,
       CASE WHEN job.state = 'available'
            THEN pg_notify('oncely_jobs', current_schema() || ':' || job.queue) END AS woke
FROM job;

-- name: job_insert_many
-- One statement per chunk, the rows sent as one JSON array (parsed by the server, not bound
-- value by value). Ids are drawn before the insert so every input row (by its ordinal) is
-- matched to the job it created, or to none when an unfinished job held its unique key.
WITH src AS (
    SELECT nextval('oncely_jobs_id_seq') AS id, r.*
    FROM jsonb_to_recordset(%(rows)s::jsonb)
         AS r(ord integer, queue text, task text, args jsonb, state text, priority integer,
              max_attempts integer, run_at timestamptz, unique_key text, singleton_key text,
              overlap text, timeout float8, concurrency_key text)
), job AS (
    INSERT INTO oncely_jobs (id, queue, task, args, state, priority, max_attempts, run_at,
                             created_at, unique_key, singleton_key, overlap, timeout,
                             concurrency_key)
    SELECT id, queue, task, args, state, priority, max_attempts, run_at, %(created_at)s,
           unique_key, singleton_key, overlap, timeout, concurrency_key
    FROM src
    ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT src.ord, src.id, job.id IS NOT NULL AS created
FROM src LEFT JOIN job ON job.id = src.id
ORDER BY src.ord;

-- name: job_reserve_ids
-- Ids for a bulk enqueue written with job_copy.
SELECT nextval('oncely_jobs_id_seq') FROM generate_series(1, %(count)s);

-- name: job_copy
-- A bulk enqueue of jobs without a unique key (oncely.store.postgres.jobs), in binary.
COPY oncely_jobs (id, queue, task, args, state, priority, max_attempts, run_at, created_at,
                  singleton_key, overlap, timeout, concurrency_key)
FROM STDIN (FORMAT BINARY);

-- name: notify_queues
SELECT pg_notify('oncely_jobs', current_schema() || ':' || queue)
FROM unnest(%(queues)s::text[]) AS queue;

-- name: job_get_unfinished_by_unique_key
SELECT * FROM oncely_jobs
WHERE unique_key = %(unique_key)s AND state NOT IN ('succeeded', 'failed', 'cancelled');

-- name: job_get_unfinished_by_unique_keys
SELECT * FROM oncely_jobs
WHERE unique_key = ANY(%(unique_keys)s::text[])
  AND state NOT IN ('succeeded', 'failed', 'cancelled');

-- name: job_get_by_slot
SELECT * FROM oncely_jobs WHERE schedule = %(schedule)s AND slot = %(slot)s;

-- name: job_get
SELECT * FROM oncely_jobs WHERE id = %(id)s;

-- name: job_get_for_update
SELECT * FROM oncely_jobs WHERE id = %(id)s FOR UPDATE;

-- name: job_list
SELECT * FROM oncely_jobs
WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
  AND (%(schedule)s::text IS NULL OR schedule = %(schedule)s::text)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: job_count_by_state
SELECT queue, state, COUNT(*) AS count FROM oncely_jobs
GROUP BY queue, state
ORDER BY queue, state;

-- name: job_cancel_waiting
UPDATE oncely_jobs
SET state = 'cancelled', finished_at = %(now)s, errors = errors || %(error)s::jsonb
WHERE id = %(id)s AND state IN ('scheduled', 'available', 'retryable')
RETURNING *;

-- name: job_request_cancel
UPDATE oncely_jobs SET cancel_requested = TRUE
WHERE id = %(id)s AND state = 'running'
RETURNING *;

-- name: job_retry
-- A human's retry: one more attempt, now. Raising max_attempts keeps the retry policy honest.
WITH job AS (
    UPDATE oncely_jobs
    SET state = 'available', run_at = %(now)s, finished_at = NULL, cancel_requested = FALSE,
        lease_owner = NULL, lease_expires_at = NULL,
        max_attempts = GREATEST(max_attempts, attempt + 1)
    WHERE id = %(id)s AND state IN ('failed', 'cancelled', 'retryable', 'scheduled')
    RETURNING *
)
SELECT job.*, pg_notify('oncely_jobs', current_schema() || ':' || job.queue) AS woke
FROM job;

-- name: job_get_expired
SELECT * FROM oncely_jobs
WHERE state = 'running' AND lease_expires_at <= %(now)s
ORDER BY lease_expires_at, id
LIMIT %(limit)s;

-- name: job_check_fence
-- A fence is live while the job runs with it, its lease is unexpired and, for a singleton job,
-- the key's lease row still carries it.
SELECT 1 AS live FROM oncely_jobs AS j
WHERE j.id = %(job_id)s AND j.state = 'running' AND j.fence = %(fence)s
  AND j.lease_expires_at > %(now)s
  AND (j.singleton_key IS NULL OR EXISTS (
        SELECT 1 FROM oncely_leases AS l
        WHERE l.key = j.singleton_key AND l.fence = %(fence)s));

-- name: job_fence_lock
-- fenced_transaction: share-locks the job row, then the key's lease row (always in that order,
-- as every writer does), so neither the fence nor the lease can move until the transaction ends.
SELECT state, fence, lease_expires_at, singleton_key FROM oncely_jobs
WHERE id = %(job_id)s
FOR SHARE;

-- name: lease_fence_lock
SELECT fence, expires_at FROM oncely_leases WHERE key = %(key)s FOR SHARE;

-- name: job_key_waiting
-- A schedule of the task was stored: its waiting manual jobs take the key its runs hold.
UPDATE oncely_jobs SET singleton_key = %(key)s
WHERE task = %(task)s AND schedule IS NULL AND singleton_key IS NULL
  AND state IN ('scheduled', 'available', 'retryable');

-- name: job_checkpoint
UPDATE oncely_jobs AS j SET checkpoint = %(checkpoint)s::jsonb
WHERE j.id = %(job_id)s AND j.state = 'running' AND j.fence = %(fence)s
  AND j.lease_expires_at > %(now)s
  AND (j.singleton_key IS NULL OR EXISTS (
        SELECT 1 FROM oncely_leases AS l
        WHERE l.key = j.singleton_key AND l.fence = %(fence)s));

-- name: job_prune
-- One batch of a retention pass; the newest keep_last of the state (and queue) always stay.
-- Rows another pruner is deleting are skipped, not waited for.
DELETE FROM oncely_jobs
WHERE id IN (
    SELECT id FROM oncely_jobs
    WHERE state = %(state)s
      AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
      AND (%(finished_before)s::timestamptz IS NULL
           OR finished_at < %(finished_before)s::timestamptz)
      AND id NOT IN (
          SELECT id FROM oncely_jobs
          WHERE state = %(state)s AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
          ORDER BY id DESC
          LIMIT %(keep_last)s)
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED);

-- name: job_prune_queue
-- One retention batch of one queue and state, oldest first along oncely_jobs_retention; rows
-- another pruner is deleting are skipped, not waited for.
DELETE FROM oncely_jobs
WHERE id IN (
    SELECT id FROM oncely_jobs
    WHERE queue = %(queue)s AND state = %(state)s AND finished_at < %(finished_before)s
      AND state IN ('succeeded', 'failed', 'cancelled')  -- lets it use the index
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED);

-- name: job_get_finished_queues
-- Queues with finished jobs, by a loose scan of oncely_jobs_retention.
WITH RECURSIVE finished(queue) AS (
    SELECT MIN(queue) FROM oncely_jobs
    WHERE state IN ('succeeded', 'failed', 'cancelled')
    UNION ALL
    SELECT (SELECT MIN(queue) FROM oncely_jobs
            WHERE state IN ('succeeded', 'failed', 'cancelled') AND queue > finished.queue)
    FROM finished WHERE finished.queue IS NOT NULL
)
SELECT queue FROM finished WHERE queue IS NOT NULL;

-- name: job_get_finished_cutoff
-- The finish instant of the keep-th newest job (skip = keep - 1): those before it go.
SELECT finished_at FROM oncely_jobs
WHERE queue = %(queue)s AND state = %(state)s
  AND state IN ('succeeded', 'failed', 'cancelled')  -- lets it use the index
ORDER BY finished_at DESC
LIMIT 1 OFFSET %(skip)s;

-- name: job_get_failed_batch
SELECT id FROM oncely_jobs
WHERE state = 'failed' AND id > %(after_id)s
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
ORDER BY id
LIMIT %(limit)s;
