-- The notification sweeper's bookkeeping: how often a pending outbox row was handed to a new
-- send job after the previous one ended, and when to look at it again (epoch seconds).
ALTER TABLE metering_notification_outbox ADD COLUMN sweeps INTEGER NOT NULL DEFAULT 0;
ALTER TABLE metering_notification_outbox ADD COLUMN next_sweep_at REAL;
