-- oncely schema, version 4 (PostgreSQL): executions are recorded once per statement instead of
-- once per row. A claim or a batch of finishes changes dozens of jobs in one statement; a row
-- trigger ran a PL/pgSQL INSERT or UPDATE for each of them, which cost more server time than the
-- claim itself. The statement trigger sees every changed row in its transition tables and records
-- them in two set-based statements. What it records is unchanged (see version 2).
-- (Transition tables rule out a column list, so it fires on every UPDATE of oncely_jobs; for an
-- update that starts or ends no attempt it joins the changed rows and writes nothing.)

DROP TRIGGER oncely_execution_started ON oncely_jobs;
DROP TRIGGER oncely_execution_ended ON oncely_jobs;
DROP FUNCTION oncely_execution_started();
DROP FUNCTION oncely_execution_ended();

CREATE FUNCTION oncely_executions_record() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    -- Attempts that ended: a finished attempt ends at finished_at; a retried or released one
    -- when its error was recorded.
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
    -- Attempts that started.
    INSERT INTO oncely_executions (job_id, task, queue, schedule, slot, attempt, fence, worker_id,
                                   run_at, started_at)
    SELECT n.id, n.task, n.queue, n.schedule, n.slot, n.attempt, n.fence, n.lease_owner,
           o.run_at, COALESCE(n.started_at, o.run_at)
    FROM oncely_changed_old AS o
    JOIN oncely_changed_new AS n ON n.id = o.id
    WHERE n.state = 'running' AND o.state <> 'running'
    ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE TRIGGER oncely_executions_record
AFTER UPDATE ON oncely_jobs
REFERENCING OLD TABLE AS oncely_changed_old NEW TABLE AS oncely_changed_new
FOR EACH STATEMENT
EXECUTE FUNCTION oncely_executions_record();

-- An execution row is updated once, when its attempt ends. Room on its page lets that update
-- stay on the page without new index entries (a HOT update).
ALTER TABLE oncely_executions SET (fillfactor = 70);
