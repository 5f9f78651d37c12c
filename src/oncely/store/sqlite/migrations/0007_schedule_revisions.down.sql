-- Undoes version 7 (SQLite). Slots recorded 'paused' become 'missed' (version 6 knows no pause).
-- The table gets back the exact definition of version 1 (renaming a new table would store
-- another text of it).
ALTER TABLE oncely_slots RENAME TO oncely_slots_v7;
CREATE TABLE oncely_slots (
    schedule    TEXT NOT NULL,
    slot        REAL NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('enqueued', 'ran', 'failed', 'skipped_overlap',
                                                  'missed', 'coalesced')),
    job_id      INTEGER,
    recorded_at REAL NOT NULL,
    updated_at  REAL NOT NULL,
    note        TEXT,
    PRIMARY KEY (schedule, slot)
);
INSERT INTO oncely_slots (schedule, slot, outcome, job_id, recorded_at, updated_at, note)
SELECT schedule, slot, CASE outcome WHEN 'paused' THEN 'missed' ELSE outcome END, job_id,
       recorded_at, updated_at, note
FROM oncely_slots_v7;
DROP TABLE oncely_slots_v7;

ALTER TABLE oncely_workers DROP COLUMN declared;

ALTER TABLE oncely_schedules DROP COLUMN switch_cursor;
ALTER TABLE oncely_schedules DROP COLUMN paused_reason;
ALTER TABLE oncely_schedules DROP COLUMN paused_at;
ALTER TABLE oncely_schedules DROP COLUMN origin;
ALTER TABLE oncely_schedules DROP COLUMN hashes;
ALTER TABLE oncely_schedules DROP COLUMN revision;
