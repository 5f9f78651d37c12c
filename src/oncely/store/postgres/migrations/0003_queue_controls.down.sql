-- Undoes version 3: queue controls, the rate ring and concurrency keys are dropped (a paused
-- queue runs again under version 2 code); the (state, finished_at) index comes back.
DROP INDEX oncely_jobs_retention;
CREATE INDEX oncely_jobs_finished ON oncely_jobs (state, finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
DROP INDEX oncely_jobs_running_key;
ALTER TABLE oncely_jobs DROP COLUMN concurrency_key;
DROP TABLE oncely_starts;
DROP TABLE oncely_controls;
