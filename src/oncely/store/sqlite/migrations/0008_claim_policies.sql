-- oncely schema, version 8 (SQLite): what the claim must know that it did not.
-- * A slot job carries its schedule's catch-up policy and misfire grace (seconds), so the claim
--   applies them when the job is finally claimed, not only when it was enqueued.
-- * A worker records the task names it has (a JSON array), so a claim can filter on them and a
--   job of a task no live worker has can be named; and its clock offset, which on SQLite is
--   always 0: every process of one database reads one machine's clock.
ALTER TABLE oncely_jobs ADD COLUMN catch_up TEXT CHECK (catch_up IN ('none', 'latest', 'all'));
ALTER TABLE oncely_jobs ADD COLUMN misfire_grace REAL;
ALTER TABLE oncely_workers ADD COLUMN tasks TEXT;
ALTER TABLE oncely_workers ADD COLUMN clock_offset REAL;
CREATE INDEX oncely_jobs_waiting_slots ON oncely_jobs (schedule, slot)
    WHERE state IN ('scheduled', 'available') AND schedule IS NOT NULL AND attempt = 0;
