-- Undoes version 5: version 4 code claims without the gate function.
DROP FUNCTION oncely_claim_blocked(TIMESTAMPTZ, TEXT[]);
