-- oncely schema, version 8 (PostgreSQL): what the claim must know that it did not.
-- * A slot job carries its schedule's catch-up policy and misfire grace (seconds), so the claim
--   applies them when the job is finally claimed, not only when it was enqueued (a backlog that
--   waited behind a paused queue or a fleet that was down).
-- * A worker records the task names it has, so a claim can filter on them and a job of a task
--   no live worker has can be named; and its clock's offset to this server (seconds to add to
--   its clock to read the server's), which `oncely workers` and `oncely doctor` show.
ALTER TABLE oncely_jobs ADD COLUMN catch_up TEXT CHECK (catch_up IN ('none', 'latest', 'all'));
ALTER TABLE oncely_jobs ADD COLUMN misfire_grace DOUBLE PRECISION;
ALTER TABLE oncely_workers ADD COLUMN tasks TEXT[];
ALTER TABLE oncely_workers ADD COLUMN clock_offset DOUBLE PRECISION;

-- The waiting first runs of slots, by schedule then slot: the claim's policy pass reads them.
CREATE INDEX oncely_jobs_waiting_slots ON oncely_jobs (schedule, slot)
    WHERE state IN ('scheduled', 'available') AND schedule IS NOT NULL AND attempt = 0;

-- The gate of the one-statement claim now also stops at a due waiting slot job without a key
-- (overlap allow) whose catch-up policy the full claim must apply, and looks only at jobs of
-- the tasks the claiming worker has (NULL: any).
DROP FUNCTION oncely_claim_blocked(TIMESTAMPTZ, TEXT[]);
CREATE FUNCTION oncely_claim_blocked(at TIMESTAMPTZ, queues TEXT[], tasks TEXT[])
RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(
        hashtextextended(current_schema() || '.oncely_controls', 0));
    RETURN EXISTS (
               SELECT 1 FROM oncely_controls AS c
               WHERE (c.paused OR c.max_running IS NOT NULL OR c.max_per_key IS NOT NULL
                      OR c.rate_limit IS NOT NULL)
                 AND (queues IS NULL OR c.kind = 'task' OR c.name = ANY(queues)))
        OR EXISTS (
               SELECT 1 FROM oncely_jobs AS j
               LEFT JOIN oncely_leases AS l ON l.key = j.singleton_key
               WHERE j.state IN ('scheduled', 'available', 'retryable')
                 AND j.singleton_key IS NOT NULL AND j.run_at <= at
                 AND (queues IS NULL OR j.queue = ANY(queues))
                 AND (tasks IS NULL OR j.task = ANY(tasks))
                 AND (l.owner IS NULL OR l.expires_at IS NULL OR l.expires_at <= at
                      OR (j.overlap = 'skip' AND j.schedule IS NOT NULL AND j.attempt = 0
                          AND (j.state <> 'retryable' OR j.rescues > 0))))
        OR EXISTS (
               SELECT 1 FROM oncely_jobs AS j
               WHERE j.state IN ('scheduled', 'available') AND j.schedule IS NOT NULL
                 AND j.attempt = 0 AND j.singleton_key IS NULL AND j.run_at <= at
                 AND j.catch_up IN ('none', 'latest')
                 AND (queues IS NULL OR j.queue = ANY(queues))
                 AND (tasks IS NULL OR j.task = ANY(tasks)));
END $$;
