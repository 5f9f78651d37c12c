-- oncely schema, version 3 (SQLite): queue controls, fleet-wide limits and per-queue retention.

-- Declared by workers (limits, retention) and set from the command line (paused). A queue row may
-- exist only because the queue was paused (declared_at NULL).
CREATE TABLE oncely_controls (
    kind        TEXT    NOT NULL CHECK (kind IN ('queue', 'task')),
    name        TEXT    NOT NULL,
    paused      INTEGER NOT NULL DEFAULT 0,
    max_running INTEGER CHECK (max_running IS NULL OR max_running >= 1),
    max_per_key INTEGER CHECK (max_per_key IS NULL OR max_per_key >= 1),
    rate_limit  INTEGER CHECK (rate_limit IS NULL OR rate_limit >= 1),
    rate_window REAL    CHECK (rate_window IS NULL OR rate_window > 0),
    retention   TEXT    NOT NULL DEFAULT '{}',
    rate_seq    INTEGER NOT NULL DEFAULT 0,  -- starts logged in the rate ring so far
    spec_hash   TEXT,
    declared_at REAL,
    updated_at  REAL    NOT NULL,
    PRIMARY KEY (kind, name)
);

-- The log behind rate limits, a ring of the last rate_limit starts per scope ('queue:Q',
-- 'task:T'): start number k goes to slot k mod rate_limit, where the start rate_limit places
-- before it was.
CREATE TABLE oncely_starts (
    scope      TEXT    NOT NULL,
    slot       INTEGER NOT NULL,
    started_at REAL    NOT NULL,
    job_id     INTEGER NOT NULL,
    PRIMARY KEY (scope, slot)
);

-- max_per_key: running jobs per concurrency key. Only jobs with a key have entries, so jobs
-- without one pay nothing for it.
ALTER TABLE oncely_jobs ADD COLUMN concurrency_key TEXT;
CREATE INDEX oncely_jobs_running_key ON oncely_jobs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;

-- Retention works per queue and state, oldest first; this replaces the (state, finished_at)
-- index, so a finish still updates one retention index.
DROP INDEX oncely_jobs_finished;
CREATE INDEX oncely_jobs_retention ON oncely_jobs (queue, state, finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
