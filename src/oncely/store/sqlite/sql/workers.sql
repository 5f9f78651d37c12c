-- The worker registry.

-- name: worker_register
INSERT INTO oncely_workers (worker_id, hostname, pid, queues, concurrency, started_at,
                            last_seen_at, tasks, clock_offset)
VALUES (:worker_id, :hostname, :pid, :queues, :concurrency, :started_at, :started_at, :tasks,
        :clock_offset)
ON CONFLICT (worker_id) DO UPDATE
SET hostname = excluded.hostname, pid = excluded.pid, queues = excluded.queues,
    concurrency = excluded.concurrency, started_at = excluded.started_at,
    last_seen_at = excluded.last_seen_at, tasks = excluded.tasks,
    clock_offset = excluded.clock_offset;

-- name: worker_heartbeat
UPDATE oncely_workers
SET last_seen_at = :now, clock_offset = COALESCE(:clock_offset, clock_offset)
WHERE worker_id = :worker_id;

-- name: server_time
-- One machine's clock: every process of a SQLite database reads the same one, so there is no
-- server clock to align to (NULL).
SELECT NULL AS now;

-- name: worker_deregister
DELETE FROM oncely_workers WHERE worker_id = :worker_id;

-- name: worker_list
SELECT * FROM oncely_workers ORDER BY worker_id;

-- name: worker_set_declared
-- The hash of each schedule this worker's code declares (JSON text: name -> hash).
UPDATE oncely_workers SET declared = :declared WHERE worker_id = :worker_id;
