-- Claiming, finishing and renewing jobs; key leases and the leader.
-- Lock order, everywhere: job rows first, then lease rows (claimers take lease rows sorted by
-- key), so claims, finishes, renewals and fenced transactions cannot deadlock one another.

-- name: job_list_singleton_candidates
-- Due singleton jobs in claim order, with their key's lease as it stands. Here and in the plain
-- statements, jobs of limited queues and tasks (excluded_*; empty when no control applies) are
-- left to the limited part of the claim (controls.py). The best candidate of
-- each key comes with every first run of a slot whose overlap is skip (the claim may skip those;
-- a rescued first run counts as one); candidates of a key that is held and that would only wait
-- are not locked at all. A slot is not skippable while its key's holder is overdue (its lease
-- runs out before overdue_before, see oncely.store.rescue.holder_overdue): it waits instead.
-- Here and in every claim statement, only jobs of the tasks the worker has (tasks; NULL: any)
-- are taken.
SELECT j.id, j.priority, j.run_at, j.singleton_key, j.schedule, j.slot,
       (j.overlap = 'skip' AND j.schedule IS NOT NULL AND j.attempt = 0
        AND (j.state <> 'retryable' OR j.rescues > 0)
        AND NOT COALESCE(l.owner IS NOT NULL AND l.expires_at > %(now)s
                         AND l.expires_at < %(overdue_before)s, false)) AS skippable,
       (l.owner IS NOT NULL AND l.expires_at > %(now)s) AS key_held,
       l.job_id AS key_holder
FROM oncely_jobs AS j
LEFT JOIN oncely_leases AS l ON l.key = j.singleton_key
WHERE j.id IN (
        (SELECT DISTINCT ON (singleton_key) id FROM oncely_jobs
         WHERE state IN ('scheduled', 'available', 'retryable') AND singleton_key IS NOT NULL
           AND run_at <= %(now)s
           AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
           AND queue <> ALL(%(excluded_queues)s::text[])
           AND task <> ALL(%(excluded_tasks)s::text[])
           AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
         ORDER BY singleton_key, priority DESC, run_at, id)
        UNION ALL
        (SELECT id FROM oncely_jobs
         WHERE state IN ('scheduled', 'available') AND singleton_key IS NOT NULL
           AND run_at <= %(now)s AND overlap = 'skip' AND schedule IS NOT NULL AND attempt = 0
           AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
           AND queue <> ALL(%(excluded_queues)s::text[])
           AND task <> ALL(%(excluded_tasks)s::text[])
           AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))))
  AND j.state IN ('scheduled', 'available', 'retryable')
  AND j.run_at <= %(now)s
  AND (l.owner IS NULL OR l.expires_at IS NULL OR l.expires_at <= %(now)s
       OR (j.overlap = 'skip' AND j.schedule IS NOT NULL AND j.attempt = 0
           AND (j.state <> 'retryable' OR j.rescues > 0)))
ORDER BY j.priority DESC, j.run_at, j.id
LIMIT %(scan)s
FOR UPDATE OF j SKIP LOCKED;

-- name: job_claim_fast
-- The whole claim in one statement, sent outside an explicit transaction (one round trip), for
-- the common case: no queue control that may apply is active and no due singleton job waits to
-- be granted or skipped (the gate, oncely_claim_blocked, which first takes the shared controls
-- lock; see migration 0005). Due jobs without a key are locked and started in claim order. When
-- the gate says otherwise the statement starts nothing and returns claim_blocked, and the caller
-- runs the full claim below. Always returns at least one row (job columns NULL when nothing
-- started).
WITH gate AS (
    SELECT oncely_claim_blocked(%(now)s, %(queues)s::text[], %(tasks)s::text[]) AS blocked
), candidate AS (
    SELECT id FROM oncely_jobs
    WHERE state IN ('scheduled', 'available', 'retryable')
      AND run_at <= %(now)s
      AND singleton_key IS NULL
      AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
      AND NOT (SELECT blocked FROM gate)
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), started AS (
    UPDATE oncely_jobs AS j
    SET state = 'running', attempt = j.attempt + 1, lease_owner = %(owner)s,
        worked_by = %(owner)s, execution_id = nextval('oncely_executions_id_seq'),
        lease_expires_at = %(lease_expires_at)s, fence = j.fence + 1, started_at = %(now)s
    FROM candidate AS c
    WHERE j.id = c.id
    RETURNING j.*
)
SELECT (SELECT blocked FROM gate) AS claim_blocked, s.*
FROM (SELECT 1) AS one LEFT JOIN started AS s ON true;

-- name: job_claim_fast_in_queues
WITH gate AS (
    SELECT oncely_claim_blocked(%(now)s, %(queues)s::text[], %(tasks)s::text[]) AS blocked
), candidate AS (
    SELECT id FROM oncely_jobs
    WHERE state IN ('scheduled', 'available', 'retryable')
      AND run_at <= %(now)s
      AND singleton_key IS NULL
      AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
      AND queue = ANY(%(queues)s::text[])
      AND NOT (SELECT blocked FROM gate)
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), started AS (
    UPDATE oncely_jobs AS j
    SET state = 'running', attempt = j.attempt + 1, lease_owner = %(owner)s,
        worked_by = %(owner)s, execution_id = nextval('oncely_executions_id_seq'),
        lease_expires_at = %(lease_expires_at)s, fence = j.fence + 1, started_at = %(now)s
    FROM candidate AS c
    WHERE j.id = c.id
    RETURNING j.*
)
SELECT (SELECT blocked FROM gate) AS claim_blocked, s.*
FROM (SELECT 1) AS one LEFT JOIN started AS s ON true;

-- name: job_claim_plain
-- The hot path: due jobs without a singleton key, locked and started in one statement. A job
-- is admitted while its place among these candidates plus the singleton jobs this claim grants
-- ahead of it (the ahead_* arrays) stays within the limit, so the claim as a whole takes
-- jobs in priority order.
WITH candidate AS (
    SELECT id, priority, run_at FROM oncely_jobs
    WHERE state IN ('scheduled', 'available', 'retryable')
      AND run_at <= %(now)s
      AND singleton_key IS NULL
      AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), ranked AS (
    SELECT c.id,
           row_number() OVER (ORDER BY c.priority DESC, c.run_at, c.id) AS place,
           (SELECT COUNT(*) FROM unnest(%(ahead_priority)s::integer[],
                                        %(ahead_run_at)s::timestamptz[],
                                        %(ahead_id)s::bigint[]) AS a(priority, run_at, id)
            WHERE a.priority > c.priority
               OR (a.priority = c.priority AND (a.run_at, a.id) < (c.run_at, c.id))) AS ahead
    FROM candidate AS c
)
UPDATE oncely_jobs AS j
SET state = 'running', attempt = j.attempt + 1, lease_owner = %(owner)s,
    worked_by = %(owner)s, execution_id = nextval('oncely_executions_id_seq'),
    lease_expires_at = %(lease_expires_at)s, fence = j.fence + 1, started_at = %(now)s
FROM ranked AS r
WHERE j.id = r.id AND r.place + r.ahead <= %(limit)s
RETURNING j.*;

-- name: job_claim_plain_in_queues
WITH candidate AS (
    SELECT id, priority, run_at FROM oncely_jobs
    WHERE state IN ('scheduled', 'available', 'retryable')
      AND queue = ANY(%(queues)s::text[])
      AND run_at <= %(now)s
      AND singleton_key IS NULL
      AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), ranked AS (
    SELECT c.id,
           row_number() OVER (ORDER BY c.priority DESC, c.run_at, c.id) AS place,
           (SELECT COUNT(*) FROM unnest(%(ahead_priority)s::integer[],
                                        %(ahead_run_at)s::timestamptz[],
                                        %(ahead_id)s::bigint[]) AS a(priority, run_at, id)
            WHERE a.priority > c.priority
               OR (a.priority = c.priority AND (a.run_at, a.id) < (c.run_at, c.id))) AS ahead
    FROM candidate AS c
)
UPDATE oncely_jobs AS j
SET state = 'running', attempt = j.attempt + 1, lease_owner = %(owner)s,
    worked_by = %(owner)s, execution_id = nextval('oncely_executions_id_seq'),
    lease_expires_at = %(lease_expires_at)s, fence = j.fence + 1, started_at = %(now)s
FROM ranked AS r
WHERE j.id = r.id AND r.place + r.ahead <= %(limit)s
RETURNING j.*;

-- name: job_claim_plain_excluding
-- The hot path when queue controls apply: the same, leaving limited queues and tasks to the
-- limited part of the claim. Each other queue with waiting jobs is read along oncely_jobs_claim
-- in claim order (a LATERAL scan per queue), so a backlog in a limited queue is never walked.
WITH RECURSIVE waiting(queue) AS (
    SELECT MIN(queue) FROM oncely_jobs
    WHERE state IN ('scheduled', 'available', 'retryable')
    UNION ALL
    SELECT (SELECT MIN(queue) FROM oncely_jobs
            WHERE state IN ('scheduled', 'available', 'retryable') AND queue > waiting.queue)
    FROM waiting WHERE waiting.queue IS NOT NULL
), candidate AS (
    SELECT c.id, c.priority, c.run_at
    FROM waiting CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM oncely_jobs
        WHERE queue = waiting.queue
          AND state IN ('scheduled', 'available', 'retryable')
          AND run_at <= %(now)s
          AND singleton_key IS NULL
          AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
          AND task <> ALL(%(excluded_tasks)s::text[])
        ORDER BY priority DESC, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED) AS c
    WHERE waiting.queue IS NOT NULL
      AND waiting.queue <> ALL(%(excluded_queues)s::text[])
      AND (%(queues)s::text[] IS NULL OR waiting.queue = ANY(%(queues)s::text[]))
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT %(limit)s
), ranked AS (
    SELECT c.id,
           row_number() OVER (ORDER BY c.priority DESC, c.run_at, c.id) AS place,
           (SELECT COUNT(*) FROM unnest(%(ahead_priority)s::integer[],
                                        %(ahead_run_at)s::timestamptz[],
                                        %(ahead_id)s::bigint[]) AS a(priority, run_at, id)
            WHERE a.priority > c.priority
               OR (a.priority = c.priority AND (a.run_at, a.id) < (c.run_at, c.id))) AS ahead
    FROM candidate AS c
)
UPDATE oncely_jobs AS j
SET state = 'running', attempt = j.attempt + 1, lease_owner = %(owner)s,
    worked_by = %(owner)s, execution_id = nextval('oncely_executions_id_seq'),
    lease_expires_at = %(lease_expires_at)s, fence = j.fence + 1, started_at = %(now)s
FROM ranked AS r
WHERE j.id = r.id AND r.place + r.ahead <= %(limit)s
RETURNING j.*;

-- name: job_claim_grant
-- Grants each key whose lease is free or expired (a new fence) and starts its job under that
-- fence. A lease row another transaction has locked (a renewal, a finish, a claim, or a worker
-- paused in the middle of one) is skipped rather than waited for: its job keeps waiting and the
-- claim does not stall. A key someone else took in the meantime grants nothing either. Keys are
-- taken in sorted order.
WITH wanted AS (
    SELECT g.key, g.job_id
    FROM unnest(%(keys)s::text[], %(job_ids)s::bigint[]) AS g(key, job_id)
), lockable AS (
    SELECT l.key FROM oncely_leases AS l
    WHERE l.key IN (SELECT key FROM wanted)
    ORDER BY l.key
    FOR UPDATE SKIP LOCKED
), granted AS (
    INSERT INTO oncely_leases AS l (key, fence, owner, job_id, acquired_at, expires_at)
    SELECT w.key, 1, %(owner)s, w.job_id, %(now)s, %(lease_expires_at)s
    FROM wanted AS w
    WHERE w.key IN (SELECT key FROM lockable)
       OR NOT EXISTS (SELECT 1 FROM oncely_leases AS x WHERE x.key = w.key)
    ORDER BY w.key
    ON CONFLICT (key) DO UPDATE
    SET fence = l.fence + 1, owner = excluded.owner, job_id = excluded.job_id,
        acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
    WHERE l.owner IS NULL OR l.expires_at IS NULL OR l.expires_at <= excluded.acquired_at
    RETURNING l.job_id, l.fence
)
UPDATE oncely_jobs AS j
SET state = 'running', attempt = j.attempt + 1, lease_owner = %(owner)s,
    worked_by = %(owner)s, execution_id = nextval('oncely_executions_id_seq'),
    lease_expires_at = %(lease_expires_at)s, fence = g.fence, started_at = %(now)s
FROM granted AS g
WHERE j.id = g.job_id
RETURNING j.*;

-- name: job_claim_skip
-- overlap=skip: the slot's first run found its key held; the job ends cancelled and its slot
-- skipped_overlap, with the same note on both.
WITH skipped AS (
    UPDATE oncely_jobs AS j
    SET state = 'cancelled', finished_at = %(now)s, errors = j.errors || s.errors::jsonb
    FROM unnest(%(job_ids)s::bigint[], %(errors)s::text[]) AS s(job_id, errors)
    WHERE j.id = s.job_id AND j.id = ANY(%(job_ids)s::bigint[])
    RETURNING j.*, s.errors::jsonb -> 0 ->> 'message' AS note
), ledger AS (
    UPDATE oncely_slots AS slot
    SET outcome = 'skipped_overlap', note = skipped.note, updated_at = %(now)s
    FROM skipped
    WHERE slot.schedule = skipped.schedule AND slot.slot = skipped.slot
      AND slot.job_id = skipped.id
)
SELECT * FROM skipped;

-- name: job_get_finish_target
-- The job a finish may touch, locked. A rescue (require_expired) re-checks expiry and the
-- job's own fence only: once an expired key lease was granted to another job, the old holder
-- must still be rescuable, or it would stay running forever.
SELECT j.id, j.queue, j.singleton_key, j.schedule, j.slot FROM oncely_jobs AS j
WHERE j.id = %(job_id)s AND j.state = 'running' AND j.fence = %(fence)s
  AND CASE WHEN %(require_expired)s THEN j.lease_expires_at <= %(now)s
           ELSE j.singleton_key IS NULL OR EXISTS (
                SELECT 1 FROM oncely_leases AS l
                WHERE l.key = j.singleton_key AND l.fence = %(fence)s)
      END
FOR UPDATE OF j;

-- name: lease_lock_fence
-- Locks the key's lease row while it still carries the fence (taken after the job row).
SELECT key FROM oncely_leases WHERE key = %(key)s AND fence = %(fence)s FOR UPDATE;

-- name: job_finish
-- Applies the transition, frees the key's lease if this job's fence still holds it, and records
-- the slot's outcome (only the slot's own job may). A job back in its queue, or one that freed a
-- singleton key another job may be waiting for, wakes idle claimers.
WITH job AS (
    UPDATE oncely_jobs
    SET state = %(state)s,
        finished_at = %(finished_at)s,
        result = %(result)s::jsonb,
        errors = errors || %(errors)s::jsonb,
        run_at = COALESCE(%(run_at)s::timestamptz, run_at),
        attempt = CASE WHEN %(refund)s THEN GREATEST(attempt - 1, 0) ELSE attempt END,
        lease_owner = NULL,
        lease_expires_at = NULL
    WHERE id = %(job_id)s
    RETURNING id, queue, state, singleton_key, schedule, slot
), lease AS (
    UPDATE oncely_leases AS l SET owner = NULL, job_id = NULL, expires_at = NULL
    FROM job
    WHERE l.key = job.singleton_key AND l.fence = %(fence)s
), ledger AS (
    UPDATE oncely_slots AS slot
    SET outcome = %(outcome)s, note = COALESCE(%(note)s, slot.note), updated_at = %(now)s
    FROM job
    WHERE %(outcome)s::text IS NOT NULL
      AND slot.schedule = job.schedule AND slot.slot = job.slot AND slot.job_id = job.id
)
SELECT job.id,
       CASE WHEN job.state = 'retryable' OR job.singleton_key IS NOT NULL
            THEN pg_notify('oncely_jobs', current_schema() || ':' || job.queue) END AS woke
FROM job;

-- name: job_finish_plain_many
-- Successes of jobs without a singleton key or a slot, in one statement, each under its own
-- fence; jobs it does not return go through job_finish one by one. The jobs are looked up by
-- id (id = ANY, which the planner estimates exactly); the tests of each row are one "IS TRUE"
-- filter of the join, which it cannot mistake for a selective scan: right after a burst of
-- claims its statistics count few running jobs, and separate tests made it scan every running
-- job, or the whole table once per job of the batch.
-- With wake, the finished jobs that freed a place in a queue or task with max_running or
-- max_per_key wake idle claimers of their queues (as notify_released does), in the same
-- statement and commit.
WITH done AS (
    SELECT * FROM unnest(%(job_ids)s::bigint[], %(fences)s::bigint[], %(results)s::text[],
                         %(finished_at)s::timestamptz[])
        AS d(job_id, fence, result, finished_at)
), finished AS (
    UPDATE oncely_jobs AS j
    SET state = 'succeeded', finished_at = d.finished_at, result = d.result::jsonb,
        lease_owner = NULL, lease_expires_at = NULL
    FROM done AS d
    WHERE j.id = ANY(%(job_ids)s::bigint[]) AND j.id = d.job_id
      AND (j.fence = d.fence AND j.state = 'running' AND j.singleton_key IS NULL
           AND j.schedule IS NULL) IS TRUE
    RETURNING j.id, j.queue, j.task
), woke AS (
    SELECT COUNT(pg_notify('oncely_jobs', current_schema() || ':' || freed.queue)) AS count
    FROM (SELECT DISTINCT f.queue FROM finished AS f
          WHERE %(wake)s AND EXISTS (
                SELECT 1 FROM oncely_controls AS c
                WHERE (c.max_running IS NOT NULL OR c.max_per_key IS NOT NULL)
                  AND ((c.kind = 'queue' AND c.name = f.queue)
                       OR (c.kind = 'task' AND c.name = f.task)))) AS freed
)
SELECT f.id, (SELECT count FROM woke) AS woke FROM finished AS f;

-- name: job_find_plain_finished
-- Of the successes job_finish_plain_many did not take, those already recorded under the same
-- fence: only this attempt can have written that (an earlier try whose reply was lost), so
-- they count as recorded, not as refused by the fence.
SELECT j.id FROM unnest(%(job_ids)s::bigint[], %(fences)s::bigint[]) AS d(job_id, fence)
JOIN oncely_jobs AS j ON j.id = d.job_id
WHERE j.id = ANY(%(job_ids)s::bigint[]) AND j.fence = d.fence AND (j.state = 'succeeded') IS TRUE
  AND j.singleton_key IS NULL AND j.schedule IS NULL;

-- name: lease_renew
-- One round trip for all of a worker's leases: a job's lease renews only under its current fence
-- and by its own worker; a singleton job's key lease (locked after the job rows) must still carry
-- that fence. Returns the renewed jobs.
WITH wanted AS (
    SELECT * FROM unnest(%(job_ids)s::bigint[], %(fences)s::bigint[]) AS w(job_id, fence)
), job AS (
    SELECT j.id, j.singleton_key, j.fence FROM oncely_jobs AS j
    JOIN wanted AS w ON w.job_id = j.id AND w.fence = j.fence
    WHERE j.id = ANY(%(job_ids)s::bigint[]) AND j.state = 'running'
      AND j.lease_owner = %(owner)s
    ORDER BY j.id
    FOR UPDATE OF j
), lease AS (
    SELECT l.key FROM oncely_leases AS l
    JOIN job ON l.key = job.singleton_key AND l.fence = job.fence
    ORDER BY l.key
    FOR UPDATE OF l
), kept AS (
    SELECT job.id, job.singleton_key FROM job
    WHERE job.singleton_key IS NULL OR job.singleton_key IN (SELECT key FROM lease)
), extended AS (
    UPDATE oncely_leases AS l SET expires_at = %(lease_expires_at)s
    FROM kept
    WHERE l.key = kept.singleton_key AND l.owner = %(owner)s
)
UPDATE oncely_jobs AS j SET lease_expires_at = %(lease_expires_at)s
FROM kept
WHERE j.id = kept.id
RETURNING j.id, j.cancel_requested, j.lease_expires_at;

-- name: job_get_cancel_requested
SELECT id, cancel_requested FROM oncely_jobs WHERE id = ANY(%(job_ids)s::bigint[]);

-- name: lease_get
SELECT * FROM oncely_leases WHERE key = %(key)s;

-- name: lease_list
SELECT * FROM oncely_leases ORDER BY key;

-- name: leader_elect
-- Renews the leader lease for its holder (same term), grants it when free or expired (a new
-- term), and otherwise changes nothing and returns no row.
INSERT INTO oncely_leases AS l (key, fence, owner, job_id, acquired_at, expires_at)
VALUES (%(key)s, 1, %(owner)s, NULL, %(now)s, %(expires_at)s)
ON CONFLICT (key) DO UPDATE
SET fence = CASE WHEN l.owner = excluded.owner AND l.expires_at > excluded.acquired_at
                 THEN l.fence ELSE l.fence + 1 END,
    acquired_at = CASE WHEN l.owner = excluded.owner AND l.expires_at > excluded.acquired_at
                       THEN l.acquired_at ELSE excluded.acquired_at END,
    owner = excluded.owner, job_id = NULL, expires_at = excluded.expires_at
WHERE l.owner IS NULL OR l.expires_at IS NULL OR l.expires_at <= excluded.acquired_at
   OR l.owner = excluded.owner
RETURNING *;

-- name: lease_resign
UPDATE oncely_leases SET owner = NULL, job_id = NULL, expires_at = NULL
WHERE key = %(key)s AND owner = %(owner)s;

-- name: job_list_waiting_slots
-- The claim's policy pass (oncely.store.ops.claimpolicy): due waiting first runs of slots
-- (backfilled ones flagged: the pass leaves them alone) in
-- the claimer's queues and tasks, by schedule then slot, with the policies they carry. Rows
-- another claimer is judging are skipped, not waited for.
SELECT id, schedule, slot, run_at, overlap, catch_up, misfire_grace,
       EXISTS (SELECT 1 FROM oncely_leases AS l
               WHERE l.key = oncely_jobs.singleton_key AND l.owner IS NOT NULL
                 AND l.expires_at > %(now)s) AS key_held,
       EXISTS (SELECT 1 FROM oncely_slots AS s
               WHERE s.schedule = oncely_jobs.schedule AND s.slot = oncely_jobs.slot
                 AND s.job_id = oncely_jobs.id AND s.note = 'backfill') AS backfilled
FROM oncely_jobs
WHERE state IN ('scheduled', 'available') AND schedule IS NOT NULL AND attempt = 0
  AND run_at <= %(now)s
  AND (catch_up IN ('none', 'latest') OR overlap = 'buffer_one')
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
  AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
ORDER BY schedule, slot
FOR UPDATE SKIP LOCKED;

-- name: job_end_by_policy
-- A waiting first run the policy pass drops: cancelled, with the verdict's note as its error.
UPDATE oncely_jobs
SET state = 'cancelled', finished_at = %(now)s, errors = errors || %(error)s::jsonb
WHERE id = %(id)s AND state IN ('scheduled', 'available') AND attempt = 0
RETURNING id;
