-- Undoes version 7 (SQLite). Slots recorded 'paused' become 'missed' (version 6 knows no pause).
CREATE TABLE oncely_slots_v6 (
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
INSERT INTO oncely_slots_v6 (schedule, slot, outcome, job_id, recorded_at, updated_at, note)
SELECT schedule, slot, CASE outcome WHEN 'paused' THEN 'missed' ELSE outcome END, job_id,
       recorded_at, updated_at, note
FROM oncely_slots;
DROP TABLE oncely_slots;
ALTER TABLE oncely_slots_v6 RENAME TO oncely_slots;

ALTER TABLE oncely_workers DROP COLUMN declared;

ALTER TABLE oncely_schedules DROP COLUMN switch_cursor;
ALTER TABLE oncely_schedules DROP COLUMN paused_reason;
ALTER TABLE oncely_schedules DROP COLUMN paused_at;
ALTER TABLE oncely_schedules DROP COLUMN origin;
ALTER TABLE oncely_schedules DROP COLUMN hashes;
ALTER TABLE oncely_schedules DROP COLUMN revision;
