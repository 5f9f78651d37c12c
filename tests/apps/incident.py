"""The incident configuration (``shared/reference/billing.md``) on oncely, in real workers.

A scheduled job whose task retries up to 5 times (exponential backoff) and sometimes fails, and
workers that each ask for an immediate run when they start — at import time of this module, which
runs in every worker process:

* ``ONCELY_TEST_START=trigger`` — the guarded way: ``app.trigger(SCHEDULE)`` gives the immediate
  run the identity of the schedule's current slot, so a fleet of starting workers makes one job;
* ``ONCELY_TEST_START=enqueue`` — the incident's way: ``thresholds.enqueue()``, one more job per
  process start;
* unset — nothing (the test process imports this module too, to read the records).

``ONCELY_TEST_EVERY`` sets the schedule's period in seconds (default 3600: hourly, as in the
incident). The handler writes one record per successful execution into ``incident_records`` in
the job store, through ``ctx.fenced()``; a failing attempt raises inside that transaction, so its
record is rolled back and only successful executions are counted.
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime

import oncely
from oncely.schedules import latest_slot
from tests.apps.basic import effects_connection
from tests.apps.chaos import insert_record

SCHEDULE = "usage-thresholds"
RECORDS = "incident_records"

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")


class FlakyUpstream(Exception):
    """The analytics store timed out (the handler's planned failure)."""


def failures_planned(slot: float, every: float | None = None) -> int:
    """A slot's first 0, 1 or 2 attempts fail, depending on the slot."""
    return int(slot // (every or SPEC.every or 1)) % 3


def attributed_slot(ctx: oncely.JobContext, started: float) -> float:
    """The slot a run belongs to: its own, or for a one-off job the slot current at its start."""
    if ctx.slot is not None:
        return ctx.slot.timestamp()
    current = latest_slot(SPEC, datetime.fromtimestamp(started, UTC))
    assert current is not None
    return current.timestamp()


@app.task(name="incident.thresholds",
          retry=oncely.RetryPolicy(attempts=5, backoff="exponential", base_delay=0.5))
def thresholds(ctx: oncely.JobContext) -> int:
    started = time.time()
    slot = attributed_slot(ctx, started)
    time.sleep(random.uniform(0.1, 0.3))  # evaluating every org's usage

    with ctx.fenced() as conn:
        insert_record(conn, ctx, RECORDS, slot, started)
        if ctx.attempt <= failures_planned(slot):  # raising here rolls the record back
            raise FlakyUpstream(f"attempt {ctx.attempt} of slot {slot:.0f} failed")
    return ctx.attempt


SPEC = app.schedule(SCHEDULE, thresholds, every=float(os.environ.get("ONCELY_TEST_EVERY", "3600")),
                    overlap="skip", misfire_grace=5)


def note_start(kind: str, slot: datetime | None, job_id: int | None) -> None:
    """Tell the test what this process's start-up request did (side-effect database)."""
    if not os.environ.get("ONCELY_TEST_EFFECTS"):
        return
    mark = "%s" if os.environ["ONCELY_TEST_EFFECTS"].startswith("postgresql://") else "?"
    sql = f"INSERT INTO effects (kind, key, job_id, pid, started) VALUES ({', '.join([mark] * 5)})"
    key = "" if slot is None else slot.isoformat()
    effects_connection().execute(sql, (kind, key, job_id, os.getpid(), time.time()))


_START = os.environ.get("ONCELY_TEST_START", "")
if _START == "trigger":
    _current = latest_slot(SPEC, datetime.now(UTC))
    _handle = app.trigger(SCHEDULE)  # None: the slot already had its job (anyone's)
    if _handle is None:
        note_start("trigger", _current, None)
    else:
        note_start("trigger", _handle.job.slot, _handle.id)
elif _START == "enqueue":
    note_start("enqueue", None, thresholds.enqueue().id)
