-- Undoes the metering schema's version 1: drops the metering tables and every row in them (the
-- organizations, their usage and the notification outbox). For removing the metering tables,
-- not for rolling a release back. The Stripe metering tables go too (IF EXISTS: version 3's
-- down step hands them back to their own record, oncely_stripe_migrations).
DROP TABLE metering_scores;
DROP TABLE metering_observations;
DROP TABLE metering_traces;
DROP TABLE metering_chunk_failures;
DROP TABLE metering_state;
DROP TABLE metering_notification_outbox;
DROP TABLE metering_usage_daily;
DROP TABLE metering_members;
DROP TABLE metering_projects;
DROP TABLE metering_organizations;
DROP TABLE IF EXISTS oncely_stripe_runs;
DROP TABLE IF EXISTS oncely_stripe_hours;
DROP TABLE IF EXISTS oncely_stripe_deliveries;
DROP TABLE IF EXISTS oncely_stripe_watermark;
DROP TABLE IF EXISTS oncely_stripe_migrations;
