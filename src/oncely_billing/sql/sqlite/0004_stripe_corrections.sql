-- Late usage billed once (oncely_billing.stripe_reconcile). A correction is one more meter event
-- for an (org, meter, hour) already reported: it is a row of oncely_stripe_deliveries like the
-- hour's own event, numbered by `correction` (1, 2, ...; 0 for the hour's own event) and written
-- as 'sending' before it is sent. One row per reconciliation run records what it found.
-- Additive: version 3 code never names the new column or table.
ALTER TABLE oncely_stripe_deliveries ADD COLUMN correction INTEGER NOT NULL DEFAULT 0;
CREATE INDEX oncely_stripe_deliveries_org ON oncely_stripe_deliveries (org_id, hour_start_ms);
CREATE TABLE oncely_stripe_reconciliations (
    job_id            BIGINT  NOT NULL,
    attempt           INTEGER NOT NULL,
    started_at_ms     BIGINT  NOT NULL,
    finished_at_ms    BIGINT,
    window_start_ms   BIGINT  NOT NULL,
    window_end_ms     BIGINT  NOT NULL,
    mode              TEXT    NOT NULL,
    outcome           TEXT    NOT NULL,
    orgs_checked      INTEGER NOT NULL DEFAULT 0,
    late              INTEGER NOT NULL DEFAULT 0,
    late_units        BIGINT  NOT NULL DEFAULT 0,
    corrections_sent  INTEGER NOT NULL DEFAULT 0,
    refused           INTEGER NOT NULL DEFAULT 0,
    past_window       INTEGER NOT NULL DEFAULT 0,
    past_window_units BIGINT  NOT NULL DEFAULT 0,
    over_billed       INTEGER NOT NULL DEFAULT 0,
    over_billed_units BIGINT  NOT NULL DEFAULT 0,
    details           TEXT,
    PRIMARY KEY (job_id, attempt)
);
