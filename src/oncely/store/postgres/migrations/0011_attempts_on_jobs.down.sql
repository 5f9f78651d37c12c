-- Undoes version 11: every attempt goes back into oncely_executions, written by version 10's
-- statement trigger (its body as version 10 wrote it). The attempts on job rows move there
-- first, with their ids; nothing is lost.
DROP VIEW oncely_attempts;
DROP VIEW oncely_attempts_latest;
DROP TRIGGER oncely_attempts_deleted ON oncely_jobs;
DROP FUNCTION oncely_attempts_deleted();
DROP TRIGGER oncely_attempt_moved ON oncely_jobs;
DROP FUNCTION oncely_attempt_moved();

INSERT INTO oncely_executions (id, job_id, task, queue, schedule, slot, attempt, fence,
                               worker_id, run_at, started_at, ended_at, outcome, error_kind)
SELECT execution_id, id, task, queue, schedule, slot, attempt, fence, worked_by, run_at,
       started_at,
       CASE WHEN state <> 'running' THEN finished_at END,
       CASE WHEN state <> 'running' THEN state END,
       oncely_attempt_error_kind(state, attempt, errors)
FROM oncely_jobs
WHERE execution_id IS NOT NULL
ORDER BY execution_id;

DROP INDEX oncely_jobs_attempt_task;
ALTER TABLE oncely_jobs DROP COLUMN execution_id, DROP COLUMN worked_by;
DROP FUNCTION oncely_attempt_error_kind(TEXT, INTEGER, JSONB);
ALTER TABLE oncely_executions SET (fillfactor = 70);

CREATE FUNCTION oncely_executions_record() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    -- Attempts that ended: a finished attempt ends at finished_at; a retried or released one
    -- when its error was recorded. Only a statement that took rows out of running can end one.
    IF EXISTS (SELECT 1 FROM oncely_changed_old WHERE state = 'running')
       AND EXISTS (SELECT 1 FROM oncely_changed_new WHERE state <> 'running') THEN
    UPDATE oncely_executions AS e
    SET ended_at = COALESCE(n.finished_at, (n.errors -> -1 ->> 'at')::timestamptz,
                            e.started_at),
        outcome = CASE WHEN n.state = 'retryable' AND n.attempt < o.attempt
                       THEN 'released' ELSE n.state END,
        error_kind = CASE WHEN jsonb_array_length(n.errors) > jsonb_array_length(o.errors)
                          THEN n.errors -> -1 ->> 'kind' END
    FROM oncely_changed_old AS o
    JOIN oncely_changed_new AS n ON n.id = o.id
    WHERE o.state = 'running' AND n.state <> 'running'
      AND e.job_id = o.id AND e.attempt = o.attempt AND e.fence = o.fence
      AND e.ended_at IS NULL;
    END IF;
    -- Attempts that started: only a statement that put rows into running can start one.
    IF EXISTS (SELECT 1 FROM oncely_changed_new WHERE state = 'running')
       AND EXISTS (SELECT 1 FROM oncely_changed_old WHERE state <> 'running') THEN
    INSERT INTO oncely_executions (job_id, task, queue, schedule, slot, attempt, fence, worker_id,
                                   run_at, started_at)
    SELECT n.id, n.task, n.queue, n.schedule, n.slot, n.attempt, n.fence, n.lease_owner,
           o.run_at, COALESCE(n.started_at, o.run_at)
    FROM oncely_changed_old AS o
    JOIN oncely_changed_new AS n ON n.id = o.id
    WHERE n.state = 'running' AND o.state <> 'running'
    ORDER BY n.id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER oncely_executions_record
AFTER UPDATE ON oncely_jobs
REFERENCING OLD TABLE AS oncely_changed_old NEW TABLE AS oncely_changed_new
FOR EACH STATEMENT
EXECUTE FUNCTION oncely_executions_record();
