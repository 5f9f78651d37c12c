-- Queue controls: declarations, pause, and what a claim counts against them (see store/limits.py).

-- name: control_list
SELECT * FROM oncely_controls ORDER BY kind, name;

-- name: control_active
SELECT * FROM oncely_controls
WHERE paused OR max_running IS NOT NULL OR max_per_key IS NOT NULL OR rate_limit IS NOT NULL;

-- name: control_get
SELECT * FROM oncely_controls WHERE kind = :kind AND name = :name;

-- name: control_insert
INSERT INTO oncely_controls (kind, name, max_running, max_per_key, rate_limit, rate_window,
                             retention, spec_hash, declared_at, updated_at)
VALUES (:kind, :name, :max_running, :max_per_key, :rate_limit, :rate_window, :retention,
        :spec_hash, :now, :now);

-- name: control_update
-- A changed declaration; the pause flag is the command line's and stays as it is.
UPDATE oncely_controls
SET max_running = :max_running, max_per_key = :max_per_key, rate_limit = :rate_limit,
    rate_window = :rate_window, retention = :retention, spec_hash = :spec_hash,
    declared_at = :now, updated_at = :now
WHERE kind = :kind AND name = :name;

-- name: control_declared
UPDATE oncely_controls SET declared_at = :now WHERE kind = :kind AND name = :name;

-- name: control_pause
INSERT INTO oncely_controls (kind, name, paused, updated_at)
VALUES ('queue', :name, :paused, :now)
ON CONFLICT (kind, name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at
RETURNING *;

-- name: control_running_queues
SELECT queue AS name, COUNT(*) AS running FROM oncely_jobs
WHERE state = 'running' AND queue IN (SELECT value FROM json_each(:queues))
GROUP BY queue;

-- name: control_window_starts
-- :windows is a JSON array of [scope, since]: starts after `since` are inside the window.
SELECT json_extract(w.value, '$[0]') AS scope, COUNT(*) AS count, MIN(s.started_at) AS oldest
FROM json_each(:windows) AS w
JOIN oncely_starts AS s
  ON s.scope = json_extract(w.value, '$[0]') AND s.started_at > json_extract(w.value, '$[1]')
GROUP BY 1;

-- name: control_running_keys
SELECT concurrency_key AS name, COUNT(*) AS running FROM oncely_jobs
WHERE state = 'running' AND concurrency_key IS NOT NULL
  AND (task IN (SELECT value FROM json_each(:tasks))
       OR concurrency_key IN (SELECT value FROM json_each(:keys)))
GROUP BY concurrency_key;

-- name: start_log
-- :rows is a JSON array of [scope, job_id], all started at :now.
INSERT INTO oncely_starts (scope, started_at, job_id)
SELECT json_extract(value, '$[0]'), :now, json_extract(value, '$[1]') FROM json_each(:rows);

-- name: start_forget
DELETE FROM oncely_starts WHERE scope = :scope AND started_at <= :before;
