-- Undoes version 10: the claim gate plans its queries as the server's plan cache decides, and
-- the execution trigger joins the changed rows for both kinds of attempt on every update (its
-- body as version 4 wrote it).
ALTER FUNCTION oncely_claim_blocked(TIMESTAMPTZ, TEXT[], TEXT[]) RESET plan_cache_mode;

CREATE OR REPLACE FUNCTION oncely_executions_record() RETURNS trigger
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
