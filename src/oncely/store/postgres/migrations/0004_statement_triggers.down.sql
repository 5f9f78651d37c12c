-- Undoes version 4: back to version 2's row triggers, which record the same executions one row
-- at a time (version 3 code expects them: it has no statement trigger of its own).
DROP TRIGGER oncely_executions_record ON oncely_jobs;
DROP FUNCTION oncely_executions_record();
ALTER TABLE oncely_executions RESET (fillfactor);

CREATE FUNCTION oncely_execution_started() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO oncely_executions (job_id, task, queue, schedule, slot, attempt, fence, worker_id,
                                   run_at, started_at)
    VALUES (NEW.id, NEW.task, NEW.queue, NEW.schedule, NEW.slot, NEW.attempt, NEW.fence,
            NEW.lease_owner, OLD.run_at, COALESCE(NEW.started_at, OLD.run_at));
    RETURN NULL;
END $$;

-- A finished attempt ends at finished_at; a retried or released one when its error was recorded.
CREATE FUNCTION oncely_execution_ended() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE oncely_executions
    SET ended_at = COALESCE(NEW.finished_at, (NEW.errors -> -1 ->> 'at')::timestamptz,
                            started_at),
        outcome = CASE WHEN NEW.state = 'retryable' AND NEW.attempt < OLD.attempt
                       THEN 'released' ELSE NEW.state END,
        error_kind = CASE WHEN jsonb_array_length(NEW.errors) > jsonb_array_length(OLD.errors)
                          THEN NEW.errors -> -1 ->> 'kind' END
    WHERE job_id = OLD.id AND attempt = OLD.attempt AND fence = OLD.fence AND ended_at IS NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER oncely_execution_started
AFTER UPDATE OF state ON oncely_jobs
FOR EACH ROW WHEN (NEW.state = 'running' AND OLD.state <> 'running')
EXECUTE FUNCTION oncely_execution_started();

CREATE TRIGGER oncely_execution_ended
AFTER UPDATE OF state ON oncely_jobs
FOR EACH ROW WHEN (OLD.state = 'running' AND NEW.state <> 'running')
EXECUTE FUNCTION oncely_execution_ended();
