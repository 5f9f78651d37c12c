-- Rescue of running jobs whose worker died or went silent, and worker liveness
-- (see oncely.store.rescue; the rescue is written once in oncely.store.ops.rescue, and frees the
-- key's lease with lease_release). Writes run inside one BEGIN IMMEDIATE transaction.

-- name: job_rescue_target
-- The job a rescue may touch: still running under the fence the rescuer saw, and either its
-- lease expired (:owner NULL) or still held by the owner proven gone.
SELECT id, queue, singleton_key, schedule, slot, attempt, rescues FROM oncely_jobs
WHERE id = :job_id AND state = 'running' AND fence = :fence
  AND CASE WHEN :owner IS NULL THEN lease_expires_at <= :now
           ELSE lease_owner = :owner END;

-- name: job_rescue
-- Back to work with the attempt given back (:retry), or failed once the rescue budget is spent.
UPDATE oncely_jobs
SET state = CASE WHEN :retry THEN 'retryable' ELSE 'failed' END,
    finished_at = CASE WHEN :retry THEN NULL ELSE :now END,
    run_at = CASE WHEN :retry THEN :now ELSE run_at END,
    attempt = CASE WHEN :retry THEN MAX(attempt - 1, 0) ELSE attempt END,
    rescues = rescues + 1,
    errors = json_insert(errors, '$[#]', json(:error)),
    lease_owner = NULL,
    lease_expires_at = NULL
WHERE id = :job_id;

-- name: slot_note_rescue
-- The ledger row of a rescued slot job: its outcome once the budget is spent, else only a note.
UPDATE oncely_slots SET outcome = COALESCE(:outcome, outcome), note = :note, updated_at = :now
WHERE schedule = :schedule AND slot = :slot AND job_id = :job_id;

-- name: job_running_of
SELECT * FROM oncely_jobs
WHERE state = 'running' AND lease_expires_at IS NOT NULL AND lease_owner = :owner
ORDER BY id
LIMIT :limit;

-- name: worker_liveness_set
UPDATE oncely_workers SET liveness = :liveness WHERE worker_id = :worker_id;

-- name: worker_running_owners
-- Other workers that own running jobs and hold a liveness lock (its file path) that can be tried.
SELECT DISTINCT w.worker_id, w.liveness FROM oncely_jobs AS j
JOIN oncely_workers AS w ON w.worker_id = j.lease_owner
WHERE j.state = 'running' AND j.lease_expires_at IS NOT NULL
  AND j.lease_owner <> :worker_id AND w.liveness IS NOT NULL;
