-- Undoes version 10: the claim gate plans its queries as the server's plan cache decides.
ALTER FUNCTION oncely_claim_blocked(TIMESTAMPTZ, TEXT[], TEXT[]) RESET plan_cache_mode;
