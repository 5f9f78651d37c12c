-- oncely schema, version 5 (PostgreSQL): the gate of the one-statement claim.
-- A claim takes the shared controls lock, so a pause or a new limit (which take it exclusively)
-- waits for the claims in flight, and claims that come after see it. Taken inside the claim
-- statement itself, the lock would come too late: the statement's snapshot is fixed before it
-- waits, so a pause committed meanwhile would stay invisible to it. In a VOLATILE function each
-- query takes a new snapshot, so the checks below run after the lock and see what was committed
-- before it was granted.

CREATE FUNCTION oncely_claim_blocked(at TIMESTAMPTZ, queues TEXT[]) RETURNS BOOLEAN
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
