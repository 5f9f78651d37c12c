-- Undoes the metering schema's version 2: the outbox sweeper's bookkeeping columns (version 1
-- code never reads them).
ALTER TABLE metering_notification_outbox DROP COLUMN next_sweep_at;
ALTER TABLE metering_notification_outbox DROP COLUMN sweeps;
