-- Undoes version 8 (SQLite).
DROP INDEX oncely_jobs_waiting_slots;
ALTER TABLE oncely_workers DROP COLUMN clock_offset;
ALTER TABLE oncely_workers DROP COLUMN tasks;
ALTER TABLE oncely_jobs DROP COLUMN misfire_grace;
ALTER TABLE oncely_jobs DROP COLUMN catch_up;
