-- oncely schema, version 11 (PostgreSQL): a job's latest attempt is recorded on its own row.
-- Until version 10 a statement trigger on oncely_jobs wrote every attempt twice into
-- oncely_executions: a row when a claim started it, an update when it ended. That was a third
-- of the server's work per job (a heap row and four index entries, then a second version of
-- the row), and the trigger made every update of the jobs table collect its old and new rows.
-- Now the job row is the record of its latest attempt: the claim gives the attempt its id from
-- the executions' sequence (execution_id) and names its worker (worked_by), and the finish that
-- writes the job's final state ends it. An attempt moves into oncely_executions only when it
-- gives way: when it ends into a wait (a retry, a rescue, a release; a human's retry of a
-- finished job) or its job is deleted (retention). oncely_attempts is the union of both: every
-- attempt ever started, with the same columns and ids as before, and what the readers query.
ALTER TABLE oncely_jobs ADD COLUMN execution_id BIGINT, ADD COLUMN worked_by TEXT;

-- What the attempt on a job row ended with, for a row whose attempt ended by a final state.
CREATE FUNCTION oncely_attempt_error_kind(state TEXT, attempt INTEGER, errors JSONB)
RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN state IN ('failed', 'cancelled')
                     AND (errors -> -1 ->> 'attempt')::integer = attempt
                THEN errors -> -1 ->> 'kind' END
$$;

-- Version 10's trigger goes first, so the move below does not feed it every job row.
DROP TRIGGER oncely_executions_record ON oncely_jobs;
DROP FUNCTION oncely_executions_record();
-- Its rows are now written once, complete, and never updated: no room kept for updates.
ALTER TABLE oncely_executions RESET (fillfactor);

-- The latest attempts recorded by version 10's trigger move onto their job rows.
UPDATE oncely_jobs AS j SET execution_id = e.id, worked_by = e.worker_id
FROM oncely_executions AS e
WHERE e.job_id = j.id AND e.attempt = j.attempt AND e.fence = j.fence
  AND ((j.state = 'running' AND e.ended_at IS NULL)
       OR (j.state IN ('succeeded', 'failed', 'cancelled') AND e.outcome = j.state));
DELETE FROM oncely_executions AS e USING oncely_jobs AS j WHERE e.id = j.execution_id;

-- Fires only where an attempt changes hands (its WHEN clause is tested in place, without a
-- function call, on every other update): the attempt on the row ends into a wait or gives way
-- to a new one, and moves into oncely_executions; or an attempt starts without an id (a claim
-- of code that predates this version), and gets one.
CREATE FUNCTION oncely_attempt_moved() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF OLD.execution_id IS NOT NULL
       AND (NEW.execution_id IS DISTINCT FROM OLD.execution_id
            OR NEW.state IN ('scheduled', 'available', 'retryable')) THEN
        INSERT INTO oncely_executions (id, job_id, task, queue, schedule, slot, attempt, fence,
                                       worker_id, run_at, started_at, ended_at, outcome,
                                       error_kind)
        SELECT OLD.execution_id, OLD.id, OLD.task, OLD.queue, OLD.schedule, OLD.slot,
               OLD.attempt, OLD.fence, OLD.worked_by, OLD.run_at, OLD.started_at, ended.*
        FROM (SELECT
            CASE WHEN OLD.state = 'running'
                 THEN COALESCE(NEW.finished_at, (NEW.errors -> -1 ->> 'at')::timestamptz,
                               OLD.started_at)
                 ELSE OLD.finished_at END,
            CASE WHEN OLD.state <> 'running' THEN OLD.state
                 WHEN NEW.state = 'retryable' AND NEW.attempt < OLD.attempt THEN 'released'
                 ELSE NEW.state END,
            CASE WHEN OLD.state <> 'running'
                 THEN oncely_attempt_error_kind(OLD.state, OLD.attempt, OLD.errors)
                 WHEN jsonb_array_length(NEW.errors) > jsonb_array_length(OLD.errors)
                 THEN NEW.errors -> -1 ->> 'kind' END) AS ended;
        IF NEW.execution_id IS NOT DISTINCT FROM OLD.execution_id THEN
            NEW.execution_id := NULL;
            NEW.worked_by := NULL;
        END IF;
    END IF;
    IF NEW.execution_id IS NULL AND NEW.state = 'running' THEN
        NEW.execution_id := nextval('oncely_executions_id_seq');
        NEW.worked_by := NEW.lease_owner;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER oncely_attempt_moved
BEFORE UPDATE ON oncely_jobs
FOR EACH ROW
WHEN ((OLD.execution_id IS NOT NULL
       AND (NEW.execution_id IS DISTINCT FROM OLD.execution_id
            OR NEW.state IN ('scheduled', 'available', 'retryable')))
      OR (NEW.execution_id IS NULL AND NEW.state = 'running'))
EXECUTE FUNCTION oncely_attempt_moved();

-- Deleted jobs (retention) leave their latest attempt in oncely_executions; the observations'
-- own retention prunes it in time.
CREATE FUNCTION oncely_attempts_deleted() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO oncely_executions (id, job_id, task, queue, schedule, slot, attempt, fence,
                                   worker_id, run_at, started_at, ended_at, outcome, error_kind)
    SELECT g.execution_id, g.id, g.task, g.queue, g.schedule, g.slot, g.attempt, g.fence,
           g.worked_by, g.run_at, g.started_at,
           CASE WHEN g.state <> 'running' THEN g.finished_at END,
           CASE WHEN g.state <> 'running' THEN g.state END,
           oncely_attempt_error_kind(g.state, g.attempt, g.errors)
    FROM oncely_deleted_jobs AS g
    WHERE g.execution_id IS NOT NULL
    ORDER BY g.execution_id;
    RETURN NULL;
END $$;

CREATE TRIGGER oncely_attempts_deleted
AFTER DELETE ON oncely_jobs
REFERENCING OLD TABLE AS oncely_deleted_jobs
FOR EACH STATEMENT
EXECUTE FUNCTION oncely_attempts_deleted();

-- Attempts on job rows per task by start: what the readers ask for (a schedule's window, a
-- task's latest runs and their durations, which the watchdog reads for every schedule). One
-- index: every claim and finish writes an entry into it (a second one, by start alone, cost
-- ~5% of a drain's rate; a window over all tasks reads the table instead).
CREATE INDEX oncely_jobs_attempt_task ON oncely_jobs (task, started_at)
    WHERE execution_id IS NOT NULL;

-- The latest attempt of each job, as oncely_executions has its columns.
CREATE VIEW oncely_attempts_latest AS
SELECT execution_id AS id, id AS job_id, task, queue, schedule, slot, attempt, fence,
       worked_by AS worker_id, run_at, started_at,
       CASE WHEN state <> 'running' THEN finished_at END AS ended_at,
       CASE WHEN state <> 'running' THEN state END AS outcome,
       oncely_attempt_error_kind(state, attempt, errors) AS error_kind
FROM oncely_jobs
WHERE execution_id IS NOT NULL;

-- Every attempt ever started. A query that wants the newest few reads each part in order on its
-- own (the planner does not merge the two parts in index order).
CREATE VIEW oncely_attempts AS
SELECT id, job_id, task, queue, schedule, slot, attempt, fence, worker_id, run_at, started_at,
       ended_at, outcome, error_kind
FROM oncely_executions
UNION ALL
SELECT * FROM oncely_attempts_latest;
