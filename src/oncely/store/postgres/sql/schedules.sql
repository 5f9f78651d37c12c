-- Schedules, the slot ledger and the worker registry.

-- name: schedule_get
SELECT * FROM oncely_schedules WHERE name = %(name)s;

-- name: schedule_get_for_update
SELECT * FROM oncely_schedules WHERE name = %(name)s FOR UPDATE;

-- name: schedule_list
SELECT * FROM oncely_schedules ORDER BY name;

-- name: schedule_insert
-- Two registrations racing: the loser inserts nothing and updates the winner's row instead.
INSERT INTO oncely_schedules (name, task, spec, spec_hash, cursor, created_at, updated_at,
                              declared_at)
VALUES (%(name)s, %(task)s, %(spec)s::jsonb, %(spec_hash)s, NULL, %(now)s, %(now)s, %(now)s)
ON CONFLICT (name) DO NOTHING
RETURNING name;

-- name: schedule_update
UPDATE oncely_schedules
SET task = %(task)s, spec = %(spec)s::jsonb, spec_hash = %(spec_hash)s, updated_at = %(now)s,
    declared_at = %(now)s
WHERE name = %(name)s;

-- name: schedule_declare
UPDATE oncely_schedules SET declared_at = %(now)s WHERE name = %(name)s;

-- name: schedule_advance
-- Compare-and-set; IS NOT DISTINCT FROM makes a NULL cursor compare equal to NULL.
UPDATE oncely_schedules SET cursor = %(new_cursor)s
WHERE name = %(name)s AND cursor IS NOT DISTINCT FROM %(expected_cursor)s::timestamptz;

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
-- The outcome of the slot a job belongs to; only that job may set it.
UPDATE oncely_slots SET outcome = %(outcome)s, note = %(note)s, updated_at = %(now)s
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
