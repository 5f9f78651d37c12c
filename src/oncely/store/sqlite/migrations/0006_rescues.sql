-- oncely schema, version 6 (SQLite): rescue budget and worker liveness.

-- How many times the job was rescued from a worker that died or went silent. A rescue gives the
-- attempt back (it was not the handler's failure); this count bounds how often that may happen.
ALTER TABLE oncely_jobs ADD COLUMN rescues INTEGER NOT NULL DEFAULT 0;

-- The worker's liveness lock: the path of the file it holds an flock on while its process lives
-- (see oncely.worker.liveness). NULL: the worker cannot be proven dead, only timed out.
ALTER TABLE oncely_workers ADD COLUMN liveness TEXT;
