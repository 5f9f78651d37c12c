-- oncely schema, version 10 (PostgreSQL): less server work per claim and per job.
-- * The claim gate keeps its query plans. oncely_claim_blocked runs three EXISTS queries on
--   every claim. Their parameters (the claim's instant, its queues and tasks, each possibly NULL)
--   made the plan cache judge a generic plan costlier than a custom one, so every call planned
--   all three afresh: ~0.6 ms of server time per claim, most of an empty claim's cost. Each
--   query reads a partial index that holds only waiting singleton jobs or waiting first runs of
--   slots (or the small controls table), so the generic plan is the plan a custom one would
--   pick; the function now always keeps it.
-- * The statement trigger that records executions joins the changed rows twice, once for the
--   attempts that ended and once for those that started. A claim only starts attempts, a batch
--   of finishes only ends them, a lease renewal does neither: each join now runs only when the
--   statement moved rows out of (or into) running. What it records is unchanged.
ALTER FUNCTION oncely_claim_blocked(TIMESTAMPTZ, TEXT[], TEXT[])
    SET plan_cache_mode = force_generic_plan;

CREATE OR REPLACE FUNCTION oncely_executions_record() RETURNS trigger
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
