-- oncely schema, version 2 (SQLite): what the watchdog, doctor, metrics and dashboard read.

-- One row per attempt a worker started. The triggers below write it whatever code path claims
-- or finishes the job, so the count of executions never depends on who ran them.
CREATE TABLE oncely_executions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     INTEGER NOT NULL,
    task       TEXT    NOT NULL,
    queue      TEXT    NOT NULL,
    schedule   TEXT,
    slot       REAL,
    attempt    INTEGER NOT NULL,
    fence      INTEGER NOT NULL,
    worker_id  TEXT,
    run_at     REAL    NOT NULL,
    started_at REAL    NOT NULL,
    ended_at   REAL,
    outcome    TEXT,
    error_kind TEXT
);
CREATE INDEX oncely_executions_started ON oncely_executions (started_at);
CREATE INDEX oncely_executions_task ON oncely_executions (task, started_at);
CREATE INDEX oncely_executions_job ON oncely_executions (job_id, attempt);

CREATE TRIGGER oncely_execution_started
AFTER UPDATE OF state ON oncely_jobs
WHEN NEW.state = 'running' AND OLD.state <> 'running'
BEGIN
    INSERT INTO oncely_executions (job_id, task, queue, schedule, slot, attempt, fence, worker_id,
                                   run_at, started_at)
    VALUES (NEW.id, NEW.task, NEW.queue, NEW.schedule, NEW.slot, NEW.attempt, NEW.fence,
            NEW.lease_owner, OLD.run_at, COALESCE(NEW.started_at, OLD.run_at));
END;

-- A finished attempt ends at finished_at; a retried or released one when its error was recorded.
CREATE TRIGGER oncely_execution_ended
AFTER UPDATE OF state ON oncely_jobs
WHEN OLD.state = 'running' AND NEW.state <> 'running'
BEGIN
    UPDATE oncely_executions
    SET ended_at = COALESCE(
            NEW.finished_at,
            (julianday(json_extract(NEW.errors, '$[#-1].at')) - 2440587.5) * 86400.0,
            started_at),
        outcome = CASE WHEN NEW.state = 'retryable' AND NEW.attempt < OLD.attempt
                       THEN 'released' ELSE NEW.state END,
        error_kind = CASE WHEN json_array_length(NEW.errors) > json_array_length(OLD.errors)
                          THEN json_extract(NEW.errors, '$[#-1].kind') END
    WHERE job_id = OLD.id AND attempt = OLD.attempt AND fence = OLD.fence AND ended_at IS NULL;
END;

-- Events counted fleet-wide: lease takeovers (trigger below) and fence rejections (workers).
CREATE TABLE oncely_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    name    TEXT    NOT NULL,
    at      REAL    NOT NULL,
    job_id  INTEGER,
    task    TEXT,
    subject TEXT,
    detail  TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX oncely_events_name ON oncely_events (name, at);
CREATE INDEX oncely_events_at ON oncely_events (at);

-- A grant that replaces a holder whose lease expired unreleased: its worker died or stalled.
CREATE TRIGGER oncely_lease_taken_over
AFTER UPDATE OF fence ON oncely_leases
WHEN NEW.fence > OLD.fence AND OLD.owner IS NOT NULL
BEGIN
    INSERT INTO oncely_events (name, at, job_id, task, subject, detail)
    VALUES ('lease.taken_over', COALESCE(NEW.acquired_at, 0), NEW.job_id,
            (SELECT task FROM oncely_jobs WHERE id = NEW.job_id), NEW.key,
            json_object('previous_owner', OLD.owner, 'previous_job_id', OLD.job_id,
                        'previous_fence', OLD.fence, 'owner', NEW.owner, 'fence', NEW.fence,
                        'expired_at', OLD.expires_at));
END;

CREATE TABLE oncely_anomalies (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT    NOT NULL CHECK (kind IN ('too_many', 'too_few', 'stuck', 'pressure')),
    subject       TEXT    NOT NULL,
    severity      TEXT    NOT NULL,
    summary       TEXT    NOT NULL,
    schedule      TEXT,
    ratio         REAL,
    evidence      TEXT    NOT NULL DEFAULT '{}',
    advice        TEXT    NOT NULL DEFAULT '',
    first_seen_at REAL    NOT NULL,
    last_seen_at  REAL    NOT NULL,
    resolved_at   REAL,
    occurrences   INTEGER NOT NULL DEFAULT 1
);
-- At most one open anomaly per kind and subject; raising it again updates that row.
CREATE UNIQUE INDEX oncely_anomalies_open ON oncely_anomalies (kind, subject)
    WHERE resolved_at IS NULL;
CREATE INDEX oncely_anomalies_seen ON oncely_anomalies (last_seen_at);
