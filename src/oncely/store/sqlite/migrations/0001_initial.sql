-- oncely schema, version 1 (SQLite). Instants are REAL seconds since the Unix epoch (UTC).

CREATE TABLE oncely_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    task             TEXT    NOT NULL,
    args             TEXT    NOT NULL DEFAULT '{}',
    state            TEXT    NOT NULL CHECK (state IN ('scheduled', 'available', 'running',
                             'succeeded', 'retryable', 'failed', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    run_at           REAL    NOT NULL,
    created_at       REAL    NOT NULL,
    unique_key       TEXT,
    schedule         TEXT,
    slot             REAL,
    singleton_key    TEXT,
    overlap          TEXT    NOT NULL DEFAULT 'skip'
                             CHECK (overlap IN ('skip', 'buffer_one', 'allow')),
    timeout          REAL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    fence            INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    started_at       REAL,
    finished_at      REAL,
    result           TEXT,
    errors           TEXT    NOT NULL DEFAULT '[]',
    checkpoint       TEXT
);

-- The claim's scan: waiting jobs by queue, then priority (high first), then due time.
CREATE INDEX oncely_jobs_claim ON oncely_jobs (queue, priority DESC, run_at, id)
    WHERE state IN ('scheduled', 'available', 'retryable');
-- Rescue: running jobs by lease expiry.
CREATE INDEX oncely_jobs_running ON oncely_jobs (lease_expires_at)
    WHERE state = 'running';
-- A unique key dedups while its job is unfinished.
CREATE UNIQUE INDEX oncely_jobs_unique_key ON oncely_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state NOT IN ('succeeded', 'failed', 'cancelled');
-- A slot is at most one job, ever (the ledger enforces it too, and survives pruning).
CREATE UNIQUE INDEX oncely_jobs_slot ON oncely_jobs (schedule, slot)
    WHERE schedule IS NOT NULL;
CREATE INDEX oncely_jobs_finished ON oncely_jobs (state, finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX oncely_jobs_task ON oncely_jobs (task, id);

CREATE TABLE oncely_leases (
    key         TEXT    PRIMARY KEY,
    fence       INTEGER NOT NULL DEFAULT 0,
    owner       TEXT,
    job_id      INTEGER,
    acquired_at REAL,
    expires_at  REAL
);

CREATE TABLE oncely_schedules (
    name        TEXT PRIMARY KEY,
    task        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    spec_hash   TEXT NOT NULL,
    cursor      REAL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    declared_at REAL NOT NULL
);

CREATE TABLE oncely_slots (
    schedule    TEXT NOT NULL,
    slot        REAL NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('enqueued', 'ran', 'failed', 'skipped_overlap',
                                                  'missed', 'coalesced')),
    job_id      INTEGER,
    recorded_at REAL NOT NULL,
    updated_at  REAL NOT NULL,
    note        TEXT,
    PRIMARY KEY (schedule, slot)
);

CREATE TABLE oncely_workers (
    worker_id    TEXT PRIMARY KEY,
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    queues       TEXT,
    concurrency  INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    last_seen_at REAL NOT NULL
);
