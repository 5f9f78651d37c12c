-- Rescue of running jobs whose worker died or went silent, worker liveness, and the wake-up of
-- claimers when a finish frees room (see oncely.store.rescue; the rescue is written once in
-- oncely.store.ops.rescue). Lock order as everywhere: the job row first, then the lease row.

-- name: job_rescue_target
-- The job a rescue may touch, locked: still running under the fence the rescuer saw, and either
-- its lease expired (owner NULL) or still held by the owner proven gone.
SELECT id, queue, singleton_key, schedule, slot, attempt, rescues FROM oncely_jobs
WHERE id = %(job_id)s AND state = 'running' AND fence = %(fence)s
  AND CASE WHEN %(owner)s::text IS NULL THEN lease_expires_at <= %(now)s
           ELSE lease_owner = %(owner)s::text END
FOR UPDATE;

-- name: job_rescue
-- Back to work with the attempt given back (retry), or failed once the rescue budget is spent;
-- wakes idle claimers of its queue.
WITH job AS (
    UPDATE oncely_jobs
    SET state = CASE WHEN %(retry)s THEN 'retryable' ELSE 'failed' END,
        finished_at = CASE WHEN %(retry)s THEN NULL ELSE %(now)s END,
        run_at = CASE WHEN %(retry)s THEN %(now)s ELSE run_at END,
        attempt = CASE WHEN %(retry)s THEN GREATEST(attempt - 1, 0) ELSE attempt END,
        rescues = rescues + 1,
        errors = errors || %(error)s::jsonb,
        lease_owner = NULL,
        lease_expires_at = NULL
    WHERE id = %(job_id)s
    RETURNING id, queue
)
SELECT job.id, pg_notify('oncely_jobs', current_schema() || ':' || job.queue) AS woke FROM job;

-- name: lease_release
-- Frees the key's lease if the rescued job's fence still holds it.
UPDATE oncely_leases SET owner = NULL, job_id = NULL, expires_at = NULL
WHERE key = %(key)s AND fence = %(fence)s;

-- name: slot_note_rescue
-- The ledger row of a rescued slot job: its outcome once the budget is spent, else only a note.
UPDATE oncely_slots
SET outcome = COALESCE(%(outcome)s, outcome), note = %(note)s, updated_at = %(now)s
WHERE schedule = %(schedule)s AND slot = %(slot)s AND job_id = %(job_id)s;

-- name: job_running_of
SELECT * FROM oncely_jobs
WHERE state = 'running' AND lease_expires_at IS NOT NULL AND lease_owner = %(owner)s
ORDER BY id
LIMIT %(limit)s;

-- name: worker_liveness_set
UPDATE oncely_workers SET liveness = %(liveness)s WHERE worker_id = %(worker_id)s;

-- name: liveness_lock
-- Taken on the worker's dedicated liveness connection; held until its session ends. The server's
-- incarnation (its start time, in microseconds) goes into the worker's token with the key: a
-- restart of the server ends every session at once, which proves nobody dead.
SELECT pg_try_advisory_lock(%(space)s::integer, %(key)s::integer) AS held,
       (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint AS incarnation;

-- name: liveness_ping
SELECT 1 AS alive;

-- name: worker_owners_gone
-- Other workers that own running jobs, took their liveness lock ('<key>@<incarnation>') on this
-- incarnation of the server, and whose lock no session of this database holds: their session
-- ended while the server ran on, they are gone.
SELECT DISTINCT w.worker_id FROM oncely_jobs AS j
JOIN oncely_workers AS w ON w.worker_id = j.lease_owner
WHERE j.state = 'running' AND j.lease_expires_at IS NOT NULL
  AND j.lease_owner <> %(worker_id)s AND w.liveness IS NOT NULL
  AND split_part(w.liveness, '@', 2)
      = ((extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint)::text
  AND NOT EXISTS (
      SELECT 1 FROM pg_locks AS l
      WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND l.classid = %(space)s::bigint::oid
        AND l.objid = split_part(w.liveness, '@', 1)::bigint::oid);

-- name: notify_released
-- A finished job freed room others may wait for (its singleton key, or a place in a limited
-- queue or task): wake idle claimers of its queue when the transaction commits.
SELECT pg_notify('oncely_jobs', current_schema() || ':' || freed.queue) AS woke
FROM (SELECT DISTINCT j.queue FROM oncely_jobs AS j
      WHERE j.id = ANY(%(job_ids)s::bigint[])
        AND (j.singleton_key IS NOT NULL OR EXISTS (
              SELECT 1 FROM oncely_controls AS c
              WHERE (c.max_running IS NOT NULL OR c.max_per_key IS NOT NULL)
                AND ((c.kind = 'queue' AND c.name = j.queue)
                     OR (c.kind = 'task' AND c.name = j.task))))) AS freed;
