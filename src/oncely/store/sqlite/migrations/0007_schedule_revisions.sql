-- oncely schema, version 7 (SQLite): the stored schedule definition is the truth.
-- A schedule keeps its revision, the hashes of every definition it has held (in revision order,
-- comma-separated: revision r is the r-th), its origin (declared by code, or dynamic: created at
-- run time), its pause and the cursor at its last switch; a worker records the hash of each schedule it declares; a paused
-- schedule's slots are recorded with the outcome 'paused'.
ALTER TABLE oncely_schedules ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
ALTER TABLE oncely_schedules ADD COLUMN hashes TEXT NOT NULL DEFAULT '';
ALTER TABLE oncely_schedules ADD COLUMN origin TEXT NOT NULL DEFAULT 'declared'
    CHECK (origin IN ('declared', 'dynamic'));
ALTER TABLE oncely_schedules ADD COLUMN paused_at REAL;
ALTER TABLE oncely_schedules ADD COLUMN paused_reason TEXT;
-- The cursor when the revision in force took effect: where the definition switched.
ALTER TABLE oncely_schedules ADD COLUMN switch_cursor REAL;
UPDATE oncely_schedules SET hashes = spec_hash;

ALTER TABLE oncely_workers ADD COLUMN declared TEXT;

-- A CHECK constraint cannot be altered in SQLite: the ledger table is rebuilt with the new one.
CREATE TABLE oncely_slots_v7 (
    schedule    TEXT NOT NULL,
    slot        REAL NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('enqueued', 'ran', 'failed', 'skipped_overlap',
                                                  'missed', 'coalesced', 'paused')),
    job_id      INTEGER,
    recorded_at REAL NOT NULL,
    updated_at  REAL NOT NULL,
    note        TEXT,
    PRIMARY KEY (schedule, slot)
);
INSERT INTO oncely_slots_v7 (schedule, slot, outcome, job_id, recorded_at, updated_at, note)
SELECT schedule, slot, outcome, job_id, recorded_at, updated_at, note FROM oncely_slots;
DROP TABLE oncely_slots;
ALTER TABLE oncely_slots_v7 RENAME TO oncely_slots;
