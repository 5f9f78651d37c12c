-- Undoes version 2: the executions, events and anomalies (their history is lost) and the
-- triggers that fill them.
DROP TRIGGER oncely_lease_taken_over;
DROP TRIGGER oncely_execution_ended;
DROP TRIGGER oncely_execution_started;
DROP TABLE oncely_anomalies;
DROP TABLE oncely_events;
DROP TABLE oncely_executions;
