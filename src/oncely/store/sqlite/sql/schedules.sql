-- Schedules and the slot ledger.

-- name: schedule_get
SELECT * FROM oncely_schedules WHERE name = :name;

-- name: schedule_get_for_update
-- The write lock held since BEGIN IMMEDIATE already keeps the row as read.
SELECT * FROM oncely_schedules WHERE name = :name;

-- name: schedule_list
SELECT * FROM oncely_schedules ORDER BY name;

-- name: schedule_insert
-- Two registrations racing: the loser inserts nothing and reads the winner's row instead.
INSERT INTO oncely_schedules (name, task, spec, spec_hash, cursor, created_at, updated_at,
                              declared_at, revision, hashes, origin)
VALUES (:name, :task, :spec, :spec_hash, NULL, :now, :now, :now, 1,
        :spec_hash, :origin)
ON CONFLICT (name) DO NOTHING
RETURNING name;

-- name: schedule_revise
-- A new definition in force: the next revision, its hash appended to those the row has held.
UPDATE oncely_schedules
SET task = :task, spec = :spec, spec_hash = :spec_hash, updated_at = :now,
    declared_at = :now, revision = revision + 1, switch_cursor = cursor, hashes = :hashes, origin = :origin
WHERE name = :name;

-- name: schedule_declare
UPDATE oncely_schedules SET declared_at = :now WHERE name = :name;

-- name: schedule_set_pause
UPDATE oncely_schedules SET paused_at = :paused_at, paused_reason = :reason
WHERE name = :name;

-- name: schedule_advance
-- Compare-and-set; IS makes a NULL cursor compare equal to NULL.
UPDATE oncely_schedules SET cursor = :new_cursor
WHERE name = :name AND cursor IS :expected_cursor;

-- name: schedule_advance_at_revision
-- The enqueuer's compare-and-set: the cursor moves only under the definition the slots were
-- planned from, so a revision switches the definition exactly at the cursor.
UPDATE oncely_schedules SET cursor = :new_cursor
WHERE name = :name AND cursor IS :expected_cursor AND revision = :revision;

-- name: schedule_delete
DELETE FROM oncely_schedules WHERE name = :name;

-- name: slot_insert
INSERT INTO oncely_slots (schedule, slot, outcome, job_id, recorded_at, updated_at, note)
VALUES (:schedule, :slot, :outcome, NULL, :now, :now, :note)
ON CONFLICT (schedule, slot) DO NOTHING
RETURNING schedule;

-- name: slot_get
SELECT * FROM oncely_slots WHERE schedule = :schedule AND slot = :slot;

-- name: slot_link_job
UPDATE oncely_slots SET job_id = :job_id, outcome = :outcome, note = :note, updated_at = :now
WHERE schedule = :schedule AND slot = :slot;

-- name: slot_set_outcome
-- The outcome of the slot a job belongs to; only that job may set it. Without a note of its own
-- it keeps the one it has (a rescue's).
UPDATE oncely_slots SET outcome = :outcome, note = COALESCE(:note, note), updated_at = :now
WHERE schedule = :schedule AND slot = :slot AND job_id = :job_id;

-- name: ledger_list
SELECT * FROM oncely_slots
WHERE schedule = :schedule AND (:before IS NULL OR slot < :before)
ORDER BY slot DESC
LIMIT :limit;

-- name: slot_claim_unrun
-- A slot recorded paused or missed that resume's catch-up or a backfill runs after all; only
-- one caller gets it.
UPDATE oncely_slots SET outcome = 'enqueued', note = :note, updated_at = :now
WHERE schedule = :schedule AND slot = :slot
  AND outcome IN ('paused', 'missed')
RETURNING schedule;

-- name: schedule_history
-- What operators and deploys did to a schedule (the fleet events recorded for it).
SELECT * FROM oncely_events WHERE subject = :subject
ORDER BY at DESC, id DESC
LIMIT :limit;
