-- oncely schema, version 10 (PostgreSQL): the claim gate keeps its query plans.
-- oncely_claim_blocked runs three EXISTS queries on every claim. Their parameters (the claim's
-- instant, its queues and tasks, each possibly NULL) made the plan cache judge a generic plan
-- costlier than a custom one, so every call planned all three afresh: ~0.6 ms of server time
-- per claim, most of an empty claim's cost. Each query reads a partial index that holds only
-- waiting singleton jobs or waiting first runs of slots (or the small controls table), so the
-- generic plan is the plan a custom one would pick; the function now always keeps it.
ALTER FUNCTION oncely_claim_blocked(TIMESTAMPTZ, TEXT[], TEXT[])
    SET plan_cache_mode = force_generic_plan;
