-- Claiming and finishing jobs. Both run inside one BEGIN IMMEDIATE transaction.

-- name: job_list_claim_candidates
-- Due waiting jobs in claim order, a page at a time: whole rows, since a plain job's start
-- (job_claim_start_many) returns nothing and its Job is built from the row read here. The scan
-- and its filters run on the oncely_jobs_claim index. The keyset continues after the last row of
-- the previous page.
-- The index leads with queue, so the queues that have waiting jobs are found first by a loose
-- index scan; SQLite then reads each queue in index order instead of sorting every waiting job.
-- Every query over waiting jobs names the states as the index's predicate does (equalities,
-- see migration 0009): SQLite uses a partial index only for a query that states its predicate.
WITH RECURSIVE waiting(queue) AS (
    SELECT MIN(queue) FROM oncely_jobs
    WHERE (state = 'scheduled' OR state = 'available' OR state = 'retryable')
    UNION ALL
    SELECT (SELECT MIN(queue) FROM oncely_jobs
            WHERE (state = 'scheduled' OR state = 'available' OR state = 'retryable')
              AND queue > waiting.queue)
    FROM waiting WHERE waiting.queue IS NOT NULL
)
SELECT * FROM oncely_jobs
WHERE (state = 'scheduled' OR state = 'available' OR state = 'retryable')
  AND queue IN (SELECT queue FROM waiting)
  AND run_at <= :now
  AND (:after_id IS NULL
       OR (-priority, run_at, id) > (-:after_priority, :after_run_at, :after_id))
ORDER BY priority DESC, run_at, id
LIMIT :page;

-- name: job_list_claim_candidates_in_queues
SELECT * FROM oncely_jobs
WHERE (state = 'scheduled' OR state = 'available' OR state = 'retryable')
  AND queue IN (SELECT value FROM json_each(:queues))
  AND run_at <= :now
  AND (:after_id IS NULL
       OR (-priority, run_at, id) > (-:after_priority, :after_run_at, :after_id))
ORDER BY priority DESC, run_at, id
LIMIT :page;

-- name: job_list_claim_candidates_limited
-- The scan when controls apply: only the queues that have room (:queues), leaving out the tasks
-- and concurrency keys that have none.
SELECT * FROM oncely_jobs
WHERE (state = 'scheduled' OR state = 'available' OR state = 'retryable')
  AND queue IN (SELECT value FROM json_each(:queues))
  AND run_at <= :now
  AND task NOT IN (SELECT value FROM json_each(:blocked_tasks))
  AND (concurrency_key IS NULL
       OR concurrency_key NOT IN (SELECT value FROM json_each(:blocked_keys)))
  AND (:after_id IS NULL
       OR (-priority, run_at, id) > (-:after_priority, :after_run_at, :after_id))
ORDER BY priority DESC, run_at, id
LIMIT :page;

-- name: job_get_waiting_queues
-- Queues with waiting jobs, by a loose scan of the claim index (for job_claim_candidates_limited
-- over every queue: an explicit list keeps its scan on the index, a NOT IN over queues does not).
WITH RECURSIVE waiting(queue) AS (
    SELECT MIN(queue) FROM oncely_jobs
    WHERE (state = 'scheduled' OR state = 'available' OR state = 'retryable')
    UNION ALL
    SELECT (SELECT MIN(queue) FROM oncely_jobs
            WHERE (state = 'scheduled' OR state = 'available' OR state = 'retryable')
              AND queue > waiting.queue)
    FROM waiting WHERE waiting.queue IS NOT NULL
)
SELECT queue FROM waiting WHERE queue IS NOT NULL;

-- name: job_claim_start
-- :fence is the singleton key's new fence, or NULL to advance the job's own.
UPDATE oncely_jobs
SET state = 'running', attempt = attempt + 1, lease_owner = :owner,
    lease_expires_at = :lease_expires_at, fence = COALESCE(:fence, fence + 1), started_at = :now
WHERE id = :id
RETURNING *;

-- name: job_claim_start_many
-- Jobs without a singleton key, started together: each advances its own fence. Nothing is
-- returned (a RETURNING clause costs more than the update): the claim builds the jobs from the
-- rows it read, with these changes (oncely.store.rows.started_jobs).
UPDATE oncely_jobs
SET state = 'running', attempt = attempt + 1, lease_owner = :owner,
    lease_expires_at = :lease_expires_at, fence = fence + 1, started_at = :now
WHERE id IN (SELECT value FROM json_each(:ids))
  AND (state = 'scheduled' OR state = 'available' OR state = 'retryable');

-- name: job_skip_overlap
UPDATE oncely_jobs
SET state = 'cancelled', finished_at = :now,
    errors = json_insert(errors, '$[#]', json(:error))
WHERE id = :id
RETURNING *;

-- name: job_get_finish_target
-- The job a finish may touch. A rescue (:require_expired) re-checks expiry and the job's own
-- fence only: once an expired key lease was granted to another job, the old holder must still be
-- rescuable, or it would stay running forever.
SELECT id, singleton_key, schedule, slot FROM oncely_jobs AS j
WHERE j.id = :job_id AND j.state = 'running' AND j.fence = :fence
  AND CASE WHEN :require_expired
           THEN j.lease_expires_at <= :now
           ELSE j.singleton_key IS NULL OR EXISTS (
                SELECT 1 FROM oncely_leases AS l
                WHERE l.key = j.singleton_key AND l.fence = :fence)
      END;

-- name: job_finish
UPDATE oncely_jobs
SET state = :state,
    finished_at = :finished_at,
    result = :result,
    errors = CASE WHEN :error IS NULL THEN errors
                  ELSE json_insert(errors, '$[#]', json(:error)) END,
    run_at = COALESCE(:run_at, run_at),
    attempt = CASE WHEN :refund THEN MAX(attempt - 1, 0) ELSE attempt END,
    lease_owner = NULL,
    lease_expires_at = NULL
WHERE id = :job_id;

-- name: job_finish_plain_many
-- Successes of jobs without a singleton key or a slot (the bulk of a busy queue), in one
-- statement, each under its own fence: :done is a JSON array of [job id, fence, result as JSON
-- text or null, finished_at or null for :now]. The caller reads the count of rows it changed
-- (a RETURNING clause would cost more than the update); only when some were not taken does it
-- ask job_list_plain_finished which ones were. The execution trigger ends each attempt as for
-- job_finish.
UPDATE oncely_jobs
SET state = 'succeeded', finished_at = COALESCE(json_extract(d.value, '$[3]'), :now),
    result = json_extract(d.value, '$[2]'),
    lease_owner = NULL, lease_expires_at = NULL
FROM json_each(:done) AS d
WHERE oncely_jobs.id = json_extract(d.value, '$[0]')
  AND oncely_jobs.fence = json_extract(d.value, '$[1]')
  AND oncely_jobs.state = 'running'
  AND oncely_jobs.singleton_key IS NULL AND oncely_jobs.schedule IS NULL;

-- name: job_list_plain_finished
-- Of the successes in :done (as for job_finish_plain_many), those recorded: succeeded under that
-- fence, no key, no slot. Only a success of that very attempt writes such a row (that statement,
-- or an earlier finish of the same success), so it counts as recorded, as on PostgreSQL.
SELECT json_extract(d.value, '$[0]') AS id, json_extract(d.value, '$[1]') AS fence
FROM json_each(:done) AS d
JOIN oncely_jobs AS j ON j.id = json_extract(d.value, '$[0]')
WHERE j.fence = json_extract(d.value, '$[1]') AND j.state = 'succeeded'
  AND j.singleton_key IS NULL AND j.schedule IS NULL;

-- name: job_list_waiting_slots
-- The claim's policy pass (oncely.store.ops.claimpolicy): due waiting first runs of slots
-- (backfilled ones flagged: the pass leaves them alone) in
-- the claimer's queues and tasks (JSON arrays, NULL: any), by schedule then slot, with the
-- policies they carry.
SELECT id, schedule, slot, run_at, overlap, catch_up, misfire_grace,
       EXISTS (SELECT 1 FROM oncely_leases AS l
               WHERE l.key = oncely_jobs.singleton_key AND l.owner IS NOT NULL
                 AND l.expires_at > :now) AS key_held,
       EXISTS (SELECT 1 FROM oncely_slots AS s
               WHERE s.schedule = oncely_jobs.schedule AND s.slot = oncely_jobs.slot
                 AND s.job_id = oncely_jobs.id AND s.note = 'backfill') AS backfilled
FROM oncely_jobs
WHERE state IN ('scheduled', 'available') AND schedule IS NOT NULL AND attempt = 0
  AND run_at <= :now
  AND (catch_up IN ('none', 'latest') OR overlap = 'buffer_one')
  AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
  AND (:tasks IS NULL OR task IN (SELECT value FROM json_each(:tasks)))
ORDER BY schedule, slot;

-- name: job_end_by_policy
-- A waiting first run the policy pass drops: cancelled, with the verdict's note as its error.
UPDATE oncely_jobs
SET state = 'cancelled', finished_at = :now, errors = json_insert(errors, '$[#]', json(:error))
WHERE id = :id AND state IN ('scheduled', 'available') AND attempt = 0
RETURNING id;
