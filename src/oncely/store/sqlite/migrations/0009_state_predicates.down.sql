-- Undoes version 9: the claim and retention indexes name their states with IN lists again, the
-- form version 8 queries state.
DROP INDEX oncely_jobs_retention;
CREATE INDEX oncely_jobs_retention ON oncely_jobs (queue, state, finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
DROP INDEX oncely_jobs_claim;
CREATE INDEX oncely_jobs_claim ON oncely_jobs (queue, priority DESC, run_at, id)
    WHERE state IN ('scheduled', 'available', 'retryable');
