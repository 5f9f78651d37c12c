-- oncely schema, version 7: no change on this branch of the schema's history.
-- Version 7 is a step between version 6 and the claim policies of version 8; where it is absent this file
-- keeps the versions numbered 1..N.
SELECT 1;
