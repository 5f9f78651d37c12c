-- oncely_billing schema, version 1 (PostgreSQL). Instants are timestamptz; days are date (UTC).

-- One row per organization. The SaaS owns the plan and billing columns; the free-tier job owns
-- cycle_start, cycle_usage, threshold_state and the *_at columns it sets.
CREATE TABLE metering_organizations (
    id                   BIGINT      PRIMARY KEY,
    name                 TEXT        NOT NULL,
    plan                 TEXT        NOT NULL DEFAULT 'free',
    subscription_status  TEXT,
    plan_override        TEXT,
    external_billing     TEXT,
    stripe_customer_id   TEXT,
    billing_cycle_anchor TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL,
    anchor_day           SMALLINT    GENERATED ALWAYS AS (EXTRACT(DAY FROM
                             (COALESCE(billing_cycle_anchor, created_at) AT TIME ZONE 'UTC'))::SMALLINT)
                             STORED,
    cycle_start          DATE,
    cycle_usage          BIGINT      NOT NULL DEFAULT 0,
    threshold_state      TEXT        CHECK (threshold_state IN ('WARNING', 'BLOCKED')),
    state_changed_at     TIMESTAMPTZ,
    usage_updated_at     TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX metering_organizations_blocked ON metering_organizations (id)
    WHERE threshold_state = 'BLOCKED';
CREATE INDEX metering_organizations_stripe ON metering_organizations (stripe_customer_id)
    WHERE stripe_customer_id IS NOT NULL;

CREATE TABLE metering_projects (
    id         BIGINT      PRIMARY KEY,
    org_id     BIGINT      NOT NULL,
    name       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE INDEX metering_projects_org ON metering_projects (org_id);

CREATE TABLE metering_members (
    org_id     BIGINT      NOT NULL,
    email      TEXT        NOT NULL,
    name       TEXT,
    role       TEXT        NOT NULL CHECK (role IN ('OWNER', 'ADMIN', 'MEMBER', 'VIEWER')),
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, email)
);

CREATE TABLE metering_usage_daily (
    org_id       BIGINT      NOT NULL,
    day          DATE        NOT NULL,
    traces       BIGINT      NOT NULL DEFAULT 0,
    observations BIGINT      NOT NULL DEFAULT 0,
    scores       BIGINT      NOT NULL DEFAULT 0,
    units        BIGINT      NOT NULL DEFAULT 0,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, day)
);
CREATE INDEX metering_usage_daily_day ON metering_usage_daily (day);

CREATE TABLE metering_notification_outbox (
    id          BIGSERIAL   PRIMARY KEY,
    org_id      BIGINT      NOT NULL,
    cycle_start DATE        NOT NULL,
    threshold   BIGINT      NOT NULL,
    kind        TEXT        NOT NULL CHECK (kind IN ('usage_warning', 'ingestion_blocked')),
    usage       BIGINT      NOT NULL,
    included    BIGINT      NOT NULL,
    block_at    BIGINT      NOT NULL,
    reset_date  DATE        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    status      TEXT        NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'no_recipients')),
    attempts    INTEGER     NOT NULL DEFAULT 0,
    recipients  TEXT,
    sent_at     TIMESTAMPTZ,
    last_error  TEXT,
    UNIQUE (org_id, cycle_start, threshold)
);
CREATE INDEX metering_notification_outbox_pending ON metering_notification_outbox (created_at)
    WHERE status = 'pending';

CREATE TABLE metering_state (
    key        TEXT        PRIMARY KEY,
    value      TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE metering_chunk_failures (
    id          BIGSERIAL   PRIMARY KEY,
    job_id      BIGINT,
    failed_at   TIMESTAMPTZ NOT NULL,
    org_ids     TEXT        NOT NULL,
    error       TEXT        NOT NULL,
    resolved_at TIMESTAMPTZ,
    resolved_by BIGINT
);
CREATE INDEX metering_chunk_failures_open ON metering_chunk_failures (failed_at)
    WHERE resolved_at IS NULL;

CREATE TABLE metering_traces (
    id         BIGINT      NOT NULL,
    project_id BIGINT      NOT NULL,
    timestamp  TIMESTAMPTZ NOT NULL,
    name       TEXT
);
CREATE INDEX metering_traces_time ON metering_traces (timestamp);
CREATE TABLE metering_observations (
    id         BIGINT      NOT NULL,
    trace_id   BIGINT,
    project_id BIGINT      NOT NULL,
    start_time TIMESTAMPTZ NOT NULL,
    type       TEXT
);
CREATE INDEX metering_observations_time ON metering_observations (start_time);
CREATE TABLE metering_scores (
    id         BIGINT      NOT NULL,
    trace_id   BIGINT,
    project_id BIGINT      NOT NULL,
    timestamp  TIMESTAMPTZ NOT NULL,
    name       TEXT,
    value      DOUBLE PRECISION
);
CREATE INDEX metering_scores_time ON metering_scores (timestamp);
