-- oncely_billing schema, version 1 (SQLite). Instants are REAL epoch seconds (UTC); days are
-- 'YYYY-MM-DD' text (UTC days).

-- One row per organization. The SaaS owns the plan and billing columns; the free-tier job owns
-- cycle_start, cycle_usage, threshold_state and the *_at columns it sets.
CREATE TABLE metering_organizations (
    id                   INTEGER PRIMARY KEY,
    name                 TEXT    NOT NULL,
    plan                 TEXT    NOT NULL DEFAULT 'free',
    subscription_status  TEXT,            -- Stripe's: active, trialing, past_due, canceled, ...
    plan_override        TEXT,            -- a plan granted by hand: counts as paid
    external_billing     TEXT,            -- billed by another provider (a marketplace bundle)
    stripe_customer_id   TEXT,
    billing_cycle_anchor REAL,            -- NULL: the cycle is anchored on created_at
    created_at           REAL    NOT NULL,
    anchor_day           INTEGER GENERATED ALWAYS AS (CAST(strftime('%d',
                             COALESCE(billing_cycle_anchor, created_at), 'unixepoch') AS INTEGER))
                             STORED,
    cycle_start          TEXT,            -- the cycle cycle_usage belongs to
    cycle_usage          INTEGER NOT NULL DEFAULT 0,
    threshold_state      TEXT    CHECK (threshold_state IN ('WARNING', 'BLOCKED')),
    state_changed_at     REAL,
    usage_updated_at     REAL,
    updated_at           REAL    NOT NULL
);
CREATE INDEX metering_organizations_blocked ON metering_organizations (id)
    WHERE threshold_state = 'BLOCKED';
CREATE INDEX metering_organizations_stripe ON metering_organizations (stripe_customer_id)
    WHERE stripe_customer_id IS NOT NULL;

CREATE TABLE metering_projects (
    id         INTEGER PRIMARY KEY,
    org_id     INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    deleted_at REAL
);
CREATE INDEX metering_projects_org ON metering_projects (org_id);

CREATE TABLE metering_members (
    org_id     INTEGER NOT NULL,
    email      TEXT    NOT NULL,
    name       TEXT,
    role       TEXT    NOT NULL CHECK (role IN ('OWNER', 'ADMIN', 'MEMBER', 'VIEWER')),
    created_at REAL    NOT NULL,
    PRIMARY KEY (org_id, email)
);

-- Units per organization and UTC day, from non-deleted projects, by event time.
CREATE TABLE metering_usage_daily (
    org_id       INTEGER NOT NULL,
    day          TEXT    NOT NULL,
    traces       INTEGER NOT NULL DEFAULT 0,
    observations INTEGER NOT NULL DEFAULT 0,
    scores       INTEGER NOT NULL DEFAULT 0,
    units        INTEGER NOT NULL DEFAULT 0,
    updated_at   REAL    NOT NULL,
    PRIMARY KEY (org_id, day)
) WITHOUT ROWID;
CREATE INDEX metering_usage_daily_day ON metering_usage_daily (day);

-- One row per (org, cycle, threshold) ever notified: the unique key makes the email exactly-once.
CREATE TABLE metering_notification_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id      INTEGER NOT NULL,
    cycle_start TEXT    NOT NULL,
    threshold   INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('usage_warning', 'ingestion_blocked')),
    usage       INTEGER NOT NULL,
    included    INTEGER NOT NULL,
    block_at    INTEGER NOT NULL,
    reset_date  TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'no_recipients')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    recipients  TEXT,
    sent_at     REAL,
    last_error  TEXT,
    UNIQUE (org_id, cycle_start, threshold)
);
CREATE INDEX metering_notification_outbox_pending ON metering_notification_outbox (created_at)
    WHERE status = 'pending';

-- Small key/value state of the workloads: the free-tier job's progress between runs, the gate's
-- invalidation generation.
CREATE TABLE metering_state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);

-- Chunks of organization writes that failed; the next run retries them and resolves the row.
CREATE TABLE metering_chunk_failures (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      INTEGER,
    failed_at   REAL    NOT NULL,
    org_ids     TEXT    NOT NULL,   -- JSON array
    error       TEXT    NOT NULL,
    resolved_at REAL,
    resolved_by INTEGER
);
CREATE INDEX metering_chunk_failures_open ON metering_chunk_failures (failed_at)
    WHERE resolved_at IS NULL;

-- Usage events for small deployments that keep them on the job store ("sql" usage source).
CREATE TABLE metering_traces (
    id         INTEGER NOT NULL,
    project_id INTEGER NOT NULL,
    timestamp  REAL    NOT NULL,
    name       TEXT
);
CREATE INDEX metering_traces_time ON metering_traces (timestamp);
CREATE TABLE metering_observations (
    id         INTEGER NOT NULL,
    trace_id   INTEGER,
    project_id INTEGER NOT NULL,
    start_time REAL    NOT NULL,
    type       TEXT
);
CREATE INDEX metering_observations_time ON metering_observations (start_time);
CREATE TABLE metering_scores (
    id         INTEGER NOT NULL,
    trace_id   INTEGER,
    project_id INTEGER NOT NULL,
    timestamp  REAL    NOT NULL,
    name       TEXT,
    value      REAL
);
CREATE INDEX metering_scores_time ON metering_scores (timestamp);
