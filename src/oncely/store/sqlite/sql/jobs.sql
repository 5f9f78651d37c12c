-- Jobs: insert, read, human actions (cancel, retry), rescue listing, checkpoints, pruning.

-- name: job_insert
INSERT INTO oncely_jobs (queue, task, args, state, priority, max_attempts, run_at, created_at,
                         unique_key, schedule, slot, singleton_key, overlap, timeout,
                         concurrency_key, catch_up, misfire_grace)
VALUES (:queue, :task, :args, :state, :priority, :max_attempts, :run_at, :created_at,
        :unique_key, :schedule, :slot, :singleton_key, :overlap, :timeout, :concurrency_key,
        :catch_up, :misfire_grace)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: job_get_unfinished_by_unique_key
SELECT * FROM oncely_jobs
WHERE unique_key = :unique_key AND state NOT IN ('succeeded', 'failed', 'cancelled');

-- name: job_get_by_slot
SELECT * FROM oncely_jobs WHERE schedule = :schedule AND slot = :slot;

-- name: job_get
SELECT * FROM oncely_jobs WHERE id = :id;

-- name: job_get_for_update
-- The write lock held since BEGIN IMMEDIATE already keeps the row as read.
SELECT * FROM oncely_jobs WHERE id = :id;

-- name: job_list
SELECT * FROM oncely_jobs
WHERE (:state IS NULL OR state = :state)
  AND (:queue IS NULL OR queue = :queue)
  AND (:task IS NULL OR task = :task)
  AND (:schedule IS NULL OR schedule = :schedule)
  AND (:before_id IS NULL OR id < :before_id)
ORDER BY id DESC
LIMIT :limit;

-- name: job_count_by_state
SELECT queue, state, COUNT(*) AS count FROM oncely_jobs
GROUP BY queue, state
ORDER BY queue, state;

-- name: job_cancel_waiting
UPDATE oncely_jobs
SET state = 'cancelled', finished_at = :now,
    errors = json_insert(errors, '$[#]', json(:error))
WHERE id = :id AND (state = 'scheduled' OR state = 'available' OR state = 'retryable')
RETURNING *;

-- name: job_request_cancel
UPDATE oncely_jobs SET cancel_requested = 1
WHERE id = :id AND state = 'running'
RETURNING *;

-- name: job_retry
-- A human's retry: one more attempt, now. Raising max_attempts keeps the retry policy honest.
UPDATE oncely_jobs
SET state = 'available', run_at = :now, finished_at = NULL, cancel_requested = 0,
    lease_owner = NULL, lease_expires_at = NULL,
    max_attempts = MAX(max_attempts, attempt + 1)
WHERE id = :id AND state IN ('failed', 'cancelled', 'retryable', 'scheduled')
RETURNING *;

-- name: job_get_expired
SELECT * FROM oncely_jobs
WHERE state = 'running' AND lease_expires_at <= :now
ORDER BY lease_expires_at, id
LIMIT :limit;

-- name: job_check_fence
-- A fence is live while the job runs with it, its lease is unexpired and, for a singleton job,
-- the key's lease row still carries it.
SELECT 1 FROM oncely_jobs AS j
WHERE j.id = :job_id AND j.state = 'running' AND j.fence = :fence
  AND j.lease_expires_at > :now
  AND (j.singleton_key IS NULL OR EXISTS (
        SELECT 1 FROM oncely_leases AS l WHERE l.key = j.singleton_key AND l.fence = :fence));

-- name: job_key_waiting
-- A schedule of the task was stored: its waiting manual jobs take the key its runs hold.
UPDATE oncely_jobs SET singleton_key = :key
WHERE task = :task AND schedule IS NULL AND singleton_key IS NULL
  AND state IN ('scheduled', 'available', 'retryable');

-- name: job_checkpoint
UPDATE oncely_jobs SET checkpoint = :checkpoint
WHERE id = :job_id AND state = 'running' AND fence = :fence
  AND lease_expires_at > :now
  AND (singleton_key IS NULL OR EXISTS (
        SELECT 1 FROM oncely_leases AS l
        WHERE l.key = oncely_jobs.singleton_key AND l.fence = :fence));

-- name: job_prune
-- One batch of a retention pass; the newest :keep_last of the state (and queue) always stay.
DELETE FROM oncely_jobs
WHERE id IN (
    SELECT id FROM oncely_jobs
    WHERE state = :state
      AND (:queue IS NULL OR queue = :queue)
      AND (:finished_before IS NULL OR finished_at < :finished_before)
      AND id NOT IN (
          SELECT id FROM oncely_jobs
          WHERE state = :state AND (:queue IS NULL OR queue = :queue)
          ORDER BY id DESC
          LIMIT :keep_last)
    ORDER BY id
    LIMIT :limit);

-- name: job_prune_queue
-- One retention batch of one queue and state, oldest first along oncely_jobs_retention.
DELETE FROM oncely_jobs
WHERE id IN (
    SELECT id FROM oncely_jobs
    WHERE queue = :queue AND state = :state AND finished_at < :finished_before
      AND (state = 'succeeded' OR state = 'failed' OR state = 'cancelled')  -- lets it use the index
    ORDER BY finished_at
    LIMIT :limit);

-- name: job_get_finished_queues
WITH RECURSIVE finished(queue) AS (
    SELECT MIN(queue) FROM oncely_jobs
    WHERE (state = 'succeeded' OR state = 'failed' OR state = 'cancelled')
    UNION ALL
    SELECT (SELECT MIN(queue) FROM oncely_jobs
            WHERE (state = 'succeeded' OR state = 'failed' OR state = 'cancelled')
              AND queue > finished.queue)
    FROM finished WHERE finished.queue IS NOT NULL
)
SELECT queue FROM finished WHERE queue IS NOT NULL;

-- name: job_get_finished_cutoff
-- The finish instant of the :keep-th newest job (:skip = :keep - 1): those before it go.
SELECT finished_at FROM oncely_jobs
WHERE queue = :queue AND state = :state
  AND (state = 'succeeded' OR state = 'failed' OR state = 'cancelled')  -- lets it use the index
ORDER BY finished_at DESC
LIMIT 1 OFFSET :skip;

-- name: job_get_failed_batch
SELECT id FROM oncely_jobs
WHERE state = 'failed' AND id > :after_id
  AND (:queue IS NULL OR queue = :queue)
  AND (:task IS NULL OR task = :task)
ORDER BY id
LIMIT :limit;
