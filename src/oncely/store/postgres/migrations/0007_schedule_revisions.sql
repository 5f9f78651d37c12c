-- oncely schema, version 7 (PostgreSQL): the stored schedule definition is the truth.
-- A schedule keeps its revision, the hashes of every definition it has held (in revision order,
-- comma-separated: revision r is the r-th), its origin (declared by code, or dynamic: created at
-- run time), its pause and the cursor at its last switch; a worker records the hash of each schedule it declares; a paused
-- schedule's slots are recorded with the outcome 'paused'.
ALTER TABLE oncely_schedules
    ADD COLUMN revision      INTEGER     NOT NULL DEFAULT 1,
    ADD COLUMN hashes        TEXT        NOT NULL DEFAULT '',
    ADD COLUMN origin        TEXT        NOT NULL DEFAULT 'declared'
        CHECK (origin IN ('declared', 'dynamic')),
    ADD COLUMN paused_at     TIMESTAMPTZ,
    ADD COLUMN paused_reason TEXT,
    -- The cursor when the revision in force took effect: where the definition switched.
    ADD COLUMN switch_cursor TIMESTAMPTZ;
UPDATE oncely_schedules SET hashes = spec_hash;

ALTER TABLE oncely_workers ADD COLUMN declared TEXT;

ALTER TABLE oncely_slots DROP CONSTRAINT oncely_slots_outcome_check;
ALTER TABLE oncely_slots ADD CONSTRAINT oncely_slots_outcome_check
    CHECK (outcome IN ('enqueued', 'ran', 'failed', 'skipped_overlap', 'missed', 'coalesced',
                       'paused'));
