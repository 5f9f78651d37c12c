-- Undoes the metering schema's version 4: drops the reconciliation runs and the correction
-- number. Correction rows stay in oncely_stripe_deliveries (Stripe has them): version 3 code only
-- reads them by hour and identifier, and going up again counts them by identifier.
DROP TABLE oncely_stripe_reconciliations;
DROP INDEX oncely_stripe_deliveries_org;
ALTER TABLE oncely_stripe_deliveries DROP COLUMN correction;
