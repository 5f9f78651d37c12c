-- Undoes version 2: the executions, events and anomalies (their history is lost) and the
-- triggers that fill them.
DROP TRIGGER oncely_lease_taken_over ON oncely_leases;
DROP FUNCTION oncely_lease_taken_over();
DROP TRIGGER oncely_execution_ended ON oncely_jobs;
DROP TRIGGER oncely_execution_started ON oncely_jobs;
DROP FUNCTION oncely_execution_ended();
DROP FUNCTION oncely_execution_started();
DROP TABLE oncely_anomalies;
DROP TABLE oncely_events;
DROP TABLE oncely_executions;
