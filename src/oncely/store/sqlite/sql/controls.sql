-- Queue controls: declarations, pause, and what a claim counts against them (see store/controls.py).

-- name: control_list
SELECT * FROM oncely_controls ORDER BY kind, name;

-- name: control_list_active
-- What a claim enforces: only the columns it needs (every claim reads this).
SELECT kind, name, paused, max_running, max_per_key, rate_limit, rate_window, rate_seq
FROM oncely_controls
WHERE paused OR max_running IS NOT NULL OR max_per_key IS NOT NULL OR rate_limit IS NOT NULL;

-- name: control_get
SELECT * FROM oncely_controls WHERE kind = :kind AND name = :name;

-- name: control_insert
INSERT INTO oncely_controls (kind, name, max_running, max_per_key, rate_limit, rate_window,
                             retention, spec_hash, declared_at, updated_at)
VALUES (:kind, :name, :max_running, :max_per_key, :rate_limit, :rate_window, :retention,
        :spec_hash, :now, :now)
ON CONFLICT (kind, name) DO NOTHING
RETURNING kind;

-- name: control_update
-- A changed declaration; the pause flag is the command line's and stays as it is.
UPDATE oncely_controls
SET max_running = :max_running, max_per_key = :max_per_key, rate_limit = :rate_limit,
    rate_window = :rate_window, retention = :retention, spec_hash = :spec_hash,
    rate_seq = CASE WHEN rate_limit IS :rate_limit AND rate_window IS :rate_window
                    THEN rate_seq ELSE 0 END,
    declared_at = :now, updated_at = :now
WHERE kind = :kind AND name = :name;

-- name: control_declare
UPDATE oncely_controls SET declared_at = :now WHERE kind = :kind AND name = :name;

-- name: control_pause
INSERT INTO oncely_controls (kind, name, paused, updated_at)
VALUES ('queue', :name, :paused, :now)
ON CONFLICT (kind, name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at
RETURNING *;

-- name: control_count_running_queues
SELECT queue AS name, COUNT(*) AS running FROM oncely_jobs
WHERE state = 'running' AND queue IN (SELECT value FROM json_each(:queues))
GROUP BY queue;

-- name: rate_ring_read
-- :slots is a JSON array of [scope, slot]: the ring entries the next starts would replace.
SELECT s.scope, s.slot, s.started_at
FROM json_each(:slots) AS r
JOIN oncely_starts AS s
  ON s.scope = json_extract(r.value, '$[0]') AND s.slot = json_extract(r.value, '$[1]');

-- name: control_count_running_keys
SELECT concurrency_key AS name, COUNT(*) AS running FROM oncely_jobs
WHERE state = 'running' AND concurrency_key IS NOT NULL
  AND (task IN (SELECT value FROM json_each(:tasks))
       OR concurrency_key IN (SELECT value FROM json_each(:keys)))
GROUP BY concurrency_key;

-- name: rate_ring_log
-- :entries is a JSON array of [scope, slot, job_id], all started at :now.
INSERT INTO oncely_starts (scope, slot, started_at, job_id)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), :now, json_extract(value, '$[2]')
FROM json_each(:entries) WHERE true
ON CONFLICT (scope, slot) DO UPDATE SET started_at = excluded.started_at, job_id = excluded.job_id;

-- name: rate_seq_advance
UPDATE oncely_controls SET rate_seq = rate_seq + :count WHERE kind = :kind AND name = :name;

-- name: rate_ring_clear
-- A changed rate limit starts from an empty ring (slots are numbered modulo the limit).
DELETE FROM oncely_starts WHERE scope = :scope;
