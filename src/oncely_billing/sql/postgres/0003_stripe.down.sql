-- Undoes the metering schema's version 3: hands the Stripe tables back to their own versioning
-- (oncely_stripe_migrations at version 1, as version 2 code keeps it), rows kept, so version 2
-- code finds them as it left them and nothing it reported is sent again. Version 1's down step
-- drops them, with the rest of the metering tables.
CREATE TABLE IF NOT EXISTS oncely_stripe_migrations (
    version       INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL,
    applied_at_ms BIGINT  NOT NULL
);
INSERT INTO oncely_stripe_migrations (version, name, applied_at_ms)
VALUES (1, 'stripe_schema_v1', CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)) ON CONFLICT (version) DO NOTHING;
