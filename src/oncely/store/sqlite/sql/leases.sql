-- Key leases (singleton jobs and the leader). The fence only grows: every grant adds one.

-- name: lease_grant
-- Grants the key if its lease is free or expired; returns no row while someone holds it.
INSERT INTO oncely_leases (key, fence, owner, job_id, acquired_at, expires_at)
VALUES (:key, 1, :owner, :job_id, :now, :expires_at)
ON CONFLICT (key) DO UPDATE
SET fence = oncely_leases.fence + 1, owner = excluded.owner, job_id = excluded.job_id,
    acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
WHERE oncely_leases.owner IS NULL
   OR oncely_leases.expires_at IS NULL
   OR oncely_leases.expires_at <= excluded.acquired_at
RETURNING *;

-- name: lease_get
SELECT * FROM oncely_leases WHERE key = :key;

-- name: lease_list
SELECT * FROM oncely_leases ORDER BY key;

-- name: lease_release
UPDATE oncely_leases SET owner = NULL, job_id = NULL, expires_at = NULL
WHERE key = :key AND fence = :fence;

-- name: lease_extend
UPDATE oncely_leases SET expires_at = :expires_at
WHERE key = :key AND fence = :fence AND owner = :owner;

-- name: lease_resign
UPDATE oncely_leases SET owner = NULL, job_id = NULL, expires_at = NULL
WHERE key = :key AND owner = :owner;

-- name: job_lease_renew
-- A job's lease renews only under its current fence and by its own worker.
UPDATE oncely_jobs SET lease_expires_at = :lease_expires_at
WHERE id = :job_id AND state = 'running' AND fence = :fence AND lease_owner = :owner
  AND (singleton_key IS NULL OR EXISTS (
        SELECT 1 FROM oncely_leases AS l
        WHERE l.key = oncely_jobs.singleton_key AND l.fence = :fence))
RETURNING singleton_key, cancel_requested, lease_expires_at;

-- name: job_get_lease_status
SELECT cancel_requested FROM oncely_jobs WHERE id = :job_id;
