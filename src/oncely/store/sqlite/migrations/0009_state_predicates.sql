-- oncely schema, version 9 (SQLite): the claim and retention indexes name their job states with
-- equalities instead of an IN list. Same rows in both indexes, same columns.
-- Why: a claim and a finish change the state of every job they touch, and SQLite then evaluates
-- the predicate of each partial index that names state, for the old and the new row. Within an
-- UPDATE it codes a list of more than two constants (state IN (a, b, c)) by filling a temporary
-- index with the list's values, again for every row: four such lists per job on each of the two
-- updates, about 40 % of their cost. An OR of equalities is a few comparisons.
-- Queries must state the predicate in this same form (SQLite uses a partial index only for a
-- query whose WHERE clause contains the index's predicate); the queries of this version do.
DROP INDEX oncely_jobs_claim;
CREATE INDEX oncely_jobs_claim ON oncely_jobs (queue, priority DESC, run_at, id)
    WHERE state = 'scheduled' OR state = 'available' OR state = 'retryable';
DROP INDEX oncely_jobs_retention;
CREATE INDEX oncely_jobs_retention ON oncely_jobs (queue, state, finished_at)
    WHERE state = 'succeeded' OR state = 'failed' OR state = 'cancelled';
