-- oncely schema, version 6: no change on this branch of the schema's history.
-- Version 6 is the step before the schedule revisions of version 7; where it is absent this
-- file keeps the versions numbered 1..N.
SELECT 1;
