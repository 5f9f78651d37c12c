-- Schedules, the slot ledger and the worker registry.

-- name: schedule_get
SELECT * FROM oncely_schedules WHERE name = %(name)s;

-- name: schedule_get_for_update
SELECT * FROM oncely_schedules WHERE name = %(name)s FOR UPDATE;

-- name: schedule_list
SELECT * FROM oncely_schedules ORDER BY name;

-- name: schedule_insert
-- Two registrations racing: the loser inserts nothing and reads the winner's row instead.
INSERT INTO oncely_schedules (name, task, spec, spec_hash, cursor, created_at, updated_at,
                              declared_at, revision, hashes, origin)
VALUES (%(name)s, %(task)s, %(spec)s::jsonb, %(spec_hash)s, NULL, %(now)s, %(now)s, %(now)s, 1,
        %(spec_hash)s, %(origin)s)
ON CONFLICT (name) DO NOTHING
RETURNING name;

-- name: schedule_revise
-- A new definition in force: the next revision, its hash appended to those the row has held.
UPDATE oncely_schedules
SET task = %(task)s, spec = %(spec)s::jsonb, spec_hash = %(spec_hash)s, updated_at = %(now)s,
    declared_at = %(now)s, revision = revision + 1, switch_cursor = cursor, hashes = %(hashes)s, origin = %(origin)s
WHERE name = %(name)s;

-- name: schedule_declare
UPDATE oncely_schedules SET declared_at = %(now)s WHERE name = %(name)s;

-- name: schedule_set_pause
UPDATE oncely_schedules SET paused_at = %(paused_at)s, paused_reason = %(reason)s
WHERE name = %(name)s;

-- name: schedule_advance
-- Compare-and-set; IS NOT DISTINCT FROM makes a NULL cursor compare equal to NULL.
UPDATE oncely_schedules SET cursor = %(new_cursor)s
WHERE name = %(name)s AND cursor IS NOT DISTINCT FROM %(expected_cursor)s::timestamptz;

-- name: schedule_advance_at_revision
-- The enqueuer's compare-and-set: the cursor moves only under the definition the slots were
-- planned from, so a revision switches the definition exactly at the cursor. The row lock it
-- takes orders it with a revision (schedule_get_for_update) until the slot's transaction ends.
UPDATE oncely_schedules SET cursor = %(new_cursor)s
WHERE name = %(name)s AND cursor IS NOT DISTINCT FROM %(expected_cursor)s::timestamptz
  AND revision = %(revision)s;

-- name: schedule_delete
DELETE FROM oncely_schedules WHERE name = %(name)s;

-- name: slot_insert
INSERT INTO oncely_slots (schedule, slot, outcome, job_id, recorded_at, updated_at, note)
VALUES (%(schedule)s, %(slot)s, %(outcome)s, NULL, %(now)s, %(now)s, %(note)s)
ON CONFLICT (schedule, slot) DO NOTHING
RETURNING schedule;

-- name: slot_get
SELECT * FROM oncely_slots WHERE schedule = %(schedule)s AND slot = %(slot)s;

-- name: slot_link_job
UPDATE oncely_slots
SET job_id = %(job_id)s, outcome = %(outcome)s, note = %(note)s, updated_at = %(now)s
WHERE schedule = %(schedule)s AND slot = %(slot)s;

-- name: slot_set_outcome
-- The outcome of the slot a job belongs to; only that job may set it. Without a note of its own
-- it keeps the one it has (a rescue's).
UPDATE oncely_slots SET outcome = %(outcome)s, note = COALESCE(%(note)s, note), updated_at = %(now)s
WHERE schedule = %(schedule)s AND slot = %(slot)s AND job_id = %(job_id)s;

-- name: ledger_list
SELECT * FROM oncely_slots
WHERE schedule = %(schedule)s
  AND (%(before)s::timestamptz IS NULL OR slot < %(before)s::timestamptz)
ORDER BY slot DESC
LIMIT %(limit)s;

-- name: worker_register
INSERT INTO oncely_workers (worker_id, hostname, pid, queues, concurrency, started_at,
                            last_seen_at, tasks, clock_offset)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(queues)s::text[], %(concurrency)s, %(started_at)s,
        %(started_at)s, %(tasks)s::text[], %(clock_offset)s)
ON CONFLICT (worker_id) DO UPDATE
SET hostname = excluded.hostname, pid = excluded.pid, queues = excluded.queues,
    concurrency = excluded.concurrency, started_at = excluded.started_at,
    last_seen_at = excluded.last_seen_at, tasks = excluded.tasks,
    clock_offset = excluded.clock_offset;

-- name: worker_heartbeat
UPDATE oncely_workers
SET last_seen_at = %(now)s, clock_offset = COALESCE(%(clock_offset)s, clock_offset)
WHERE worker_id = %(worker_id)s;

-- name: server_time
-- The server's clock, which judges every lease (see oncely.worker.serverclock).
SELECT clock_timestamp() AS now;

-- name: worker_deregister
DELETE FROM oncely_workers WHERE worker_id = %(worker_id)s;

-- name: worker_list
SELECT * FROM oncely_workers ORDER BY worker_id;

-- name: slot_claim_unrun
-- A slot recorded paused or missed that resume's catch-up or a backfill runs after all; only
-- one caller gets it.
UPDATE oncely_slots SET outcome = 'enqueued', note = %(note)s, updated_at = %(now)s
WHERE schedule = %(schedule)s AND slot = %(slot)s
  AND outcome IN ('paused', 'missed')
RETURNING schedule;

-- name: worker_set_declared
-- The hash of each schedule this worker's code declares (JSON text: name -> hash).
UPDATE oncely_workers SET declared = %(declared)s WHERE worker_id = %(worker_id)s;

-- name: schedule_history
-- What operators and deploys did to a schedule (the fleet events recorded for it).
SELECT * FROM oncely_events WHERE subject = %(subject)s
ORDER BY at DESC, id DESC
LIMIT %(limit)s;
