-- Stripe usage metering's tables (oncely_billing.meter) join the numbered migrations. Before,
-- they were created by oncely_billing.stripe_store and versioned in their own table,
-- oncely_stripe_migrations, which only ever held version 1: these are version 1's exact
-- definitions. A database that has them keeps them and their rows (every CREATE is IF NOT
-- EXISTS: the tables are adopted, not rebuilt), and the old record is dropped: this ledger owns
-- them from here on. Instants are epoch milliseconds (BIGINT).
CREATE TABLE IF NOT EXISTS oncely_stripe_watermark (
    name          TEXT   PRIMARY KEY,
    hour_start_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    job_id        BIGINT,
    fence         BIGINT
);
CREATE TABLE IF NOT EXISTS oncely_stripe_deliveries (
    identifier    TEXT    PRIMARY KEY,
    hour_start_ms BIGINT  NOT NULL,
    org_id        TEXT    NOT NULL,
    event_name    TEXT    NOT NULL,
    customer_id   TEXT    NOT NULL,
    value         BIGINT  NOT NULL,
    status        TEXT    NOT NULL,
    code          TEXT,
    message       TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    job_id        BIGINT,
    updated_at_ms BIGINT  NOT NULL
);
CREATE INDEX IF NOT EXISTS oncely_stripe_deliveries_hour ON oncely_stripe_deliveries (hour_start_ms);
CREATE INDEX IF NOT EXISTS oncely_stripe_deliveries_status
    ON oncely_stripe_deliveries (status, hour_start_ms);
CREATE TABLE IF NOT EXISTS oncely_stripe_hours (
    hour_start_ms  BIGINT  PRIMARY KEY,
    status         TEXT    NOT NULL,
    events         INTEGER NOT NULL DEFAULT 0,
    delivered      INTEGER NOT NULL DEFAULT 0,
    duplicates     INTEGER NOT NULL DEFAULT 0,
    failed         INTEGER NOT NULL DEFAULT 0,
    job_id         BIGINT,
    finished_at_ms BIGINT  NOT NULL,
    note           TEXT
);
CREATE TABLE IF NOT EXISTS oncely_stripe_runs (
    job_id         BIGINT  NOT NULL,
    attempt        INTEGER NOT NULL,
    started_at_ms  BIGINT  NOT NULL,
    finished_at_ms BIGINT,
    outcome        TEXT    NOT NULL,
    hours          INTEGER NOT NULL DEFAULT 0,
    events         INTEGER NOT NULL DEFAULT 0,
    note           TEXT,
    PRIMARY KEY (job_id, attempt)
);
DROP TABLE IF EXISTS oncely_stripe_migrations;
