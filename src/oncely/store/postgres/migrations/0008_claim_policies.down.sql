-- Undoes version 8 (PostgreSQL): the two-argument claim gate of version 6 comes back.
DROP FUNCTION oncely_claim_blocked(TIMESTAMPTZ, TEXT[], TEXT[]);
CREATE OR REPLACE FUNCTION oncely_claim_blocked(at TIMESTAMPTZ, queues TEXT[]) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(
        hashtextextended(current_schema() || '.oncely_controls', 0));
    -- An active control that may apply to this claim (a task's wherever its jobs are queued),
    -- or a due singleton job the full claim would grant or skip.
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
                 AND (l.owner IS NULL OR l.expires_at IS NULL OR l.expires_at <= at
                      OR (j.overlap = 'skip' AND j.schedule IS NOT NULL AND j.attempt = 0
                          AND (j.state <> 'retryable' OR j.rescues > 0))));
END $$;
DROP INDEX oncely_jobs_waiting_slots;
ALTER TABLE oncely_workers DROP COLUMN clock_offset;
ALTER TABLE oncely_workers DROP COLUMN tasks;
ALTER TABLE oncely_jobs DROP COLUMN misfire_grace;
ALTER TABLE oncely_jobs DROP COLUMN catch_up;
