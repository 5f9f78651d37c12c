-- Undoes version 6: the rescue count and the workers' liveness column (version 5 code reads
-- neither).
ALTER TABLE oncely_workers DROP COLUMN liveness;
ALTER TABLE oncely_jobs DROP COLUMN rescues;
