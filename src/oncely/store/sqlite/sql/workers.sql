-- The worker registry.

-- name: worker_register
INSERT INTO oncely_workers (worker_id, hostname, pid, queues, concurrency, started_at,
                            last_seen_at)
VALUES (:worker_id, :hostname, :pid, :queues, :concurrency, :started_at, :started_at)
ON CONFLICT (worker_id) DO UPDATE
SET hostname = excluded.hostname, pid = excluded.pid, queues = excluded.queues,
    concurrency = excluded.concurrency, started_at = excluded.started_at,
    last_seen_at = excluded.last_seen_at;

-- name: worker_heartbeat
UPDATE oncely_workers SET last_seen_at = :now WHERE worker_id = :worker_id;

-- name: worker_deregister
DELETE FROM oncely_workers WHERE worker_id = :worker_id;

-- name: worker_list
SELECT * FROM oncely_workers ORDER BY worker_id;

-- name: worker_set_declared
-- The hash of each schedule this worker's code declares (JSON text: name -> hash).
UPDATE oncely_workers SET declared = :declared WHERE worker_id = :worker_id;
