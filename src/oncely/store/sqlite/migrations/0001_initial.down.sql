-- Undoes version 1: drops the engine's tables. Every job, schedule, slot and lease is lost, so
-- this step exists to remove oncely from a database, not to roll a release back.
DROP TABLE oncely_workers;
DROP TABLE oncely_slots;
DROP TABLE oncely_schedules;
DROP TABLE oncely_leases;
DROP TABLE oncely_jobs;
