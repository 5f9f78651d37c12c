-- Undoes version 6: the claim gate of version 5 (it knows nothing of rescues), then the rescue
-- count and the workers' liveness column (version 5 code reads neither).
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
                          AND j.state <> 'retryable')));
END $$;

ALTER TABLE oncely_workers DROP COLUMN liveness;
ALTER TABLE oncely_jobs DROP COLUMN rescues;
