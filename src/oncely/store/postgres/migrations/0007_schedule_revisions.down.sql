-- Undoes version 7 (PostgreSQL). Slots recorded 'paused' become 'missed' (version 6 knows no
-- pause).
ALTER TABLE oncely_slots DROP CONSTRAINT oncely_slots_outcome_check;
UPDATE oncely_slots SET outcome = 'missed' WHERE outcome = 'paused';
ALTER TABLE oncely_slots ADD CONSTRAINT oncely_slots_outcome_check
    CHECK (outcome IN ('enqueued', 'ran', 'failed', 'skipped_overlap', 'missed', 'coalesced'));

ALTER TABLE oncely_workers DROP COLUMN declared;

ALTER TABLE oncely_schedules
    DROP COLUMN switch_cursor,
    DROP COLUMN paused_reason,
    DROP COLUMN paused_at,
    DROP COLUMN origin,
    DROP COLUMN hashes,
    DROP COLUMN revision;
