"""The claim of limited queues in one round trip (PostgreSQL).

A claim whose queues or tasks have controls (max_running, a rate limit, max_per_key, a pause)
used to run the whole claim of ``claim.py`` — a dozen statements, one round trip each — while
holding the rows of those controls, so claimers of a limited queue took turns for the length of
all of it. Here the same work is three statements sent at once in one transaction (psycopg's
pipeline; ``sql/limited.sql``):

1. ``control_claim_lock``: the shared controls lock, so a declaration or a pause waits for the
   claims in flight and claims after it see it;
2. ``control_lock_for_claim``: the rows of the controls that may apply, locked ``FOR UPDATE`` in
   sorted order. Claimers of limited scopes take turns from here to the commit — the length of
   one statement;
3. ``control_read_usage_for_claim`` and ``job_claim_limited``: their snapshots are taken after
   those locks were granted, so they see every start the previous holder committed. The claim
   statement counts the room of each control (running jobs are counted, not kept in a counter
   that every finish would have to update) and starts what fits, in claim order; it logs the
   starts of rated scopes in their rings.

No statement needs a result of the one before it, so the client waits for the server once. The
limits are exact for the same reason as in the full claim: whoever admits jobs of a limited
scope holds its control row until its starts are committed, and counts after taking it.

The statement walks the controls as :class:`oncely.store.controls.ClaimRoom` does only while no
job is under two of them at once; otherwise, and when a due singleton job or a slot job with a
catch-up policy waits, it starts nothing and says so (``claim_blocked``), and the store runs the
full claim. The waits of the result (which scopes held jobs back, and until when) come from a gate
rebuilt from the controls and usage read in the same transaction, with the claim's starts taken.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from oncely.store.base import ClaimResult, JobClaimParams
from oncely.store.controls import ClaimRoom
from oncely.store.ops.controls import to_control
from oncely.store.postgres.claim import claim_values
from oncely.store.postgres.controls import usage_of
from oncely.store.postgres.dialect import QUERIES, to_job
from oncely.store.rows import utc


def claim_limited(
    conn: psycopg.Connection[Any], params: JobClaimParams
) -> tuple[ClaimResult, bool] | None:
    """Claim on an autocommit connection in one round trip: the result, and whether any control
    applied to it; None when the full claim must run."""
    values = {**claim_values(params), "limit": params.limit}
    with conn.pipeline(), conn.transaction():
        locked = conn.cursor(row_factory=dict_row)
        usage = conn.cursor(row_factory=dict_row)
        claimed = conn.cursor(row_factory=dict_row)
        conn.execute(QUERIES["control_claim_lock"])
        locked.execute(QUERIES["control_lock_for_claim"], values, prepare=True)
        usage.execute(QUERIES["control_read_usage_for_claim"], values, prepare=True)
        claimed.execute(QUERIES["job_claim_limited"], values, prepare=True)
    rows = claimed.fetchall()
    if rows and rows[0]["claim_blocked"]:
        return None
    jobs = sorted((to_job(row) for row in rows if row["id"] is not None),
                  key=lambda job: (-job.priority, job.run_at, job.id))
    controls = [to_control(row, json_text=False) for row in locked.fetchall()]
    if not controls:
        return ClaimResult(jobs=jobs), False
    gate = ClaimRoom(controls, usage_of(usage.fetchall()), utc(params.now), depth=params.limit)
    for job in jobs:
        gate.take(job.queue, job.task, job.concurrency_key)
    return ClaimResult(jobs, waits=list(gate.waits.values())), True

