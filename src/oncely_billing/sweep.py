"""The notification sweeper: no outbox row stays ``pending`` because its send job gave up.

The ``send-notification`` job of an outbox row retries for about a quarter of an hour and then
fails for good; an SMTP outage longer than that would leave the row ``pending`` forever (the
threshold job never writes the row again: its insert is ``ON CONFLICT DO NOTHING``). The sweep
closes that gap. It runs at the start of every free-tier threshold run (hourly, before the usage
source is read, so an outage of the source does not stop it), in its own fenced transaction, and
as the task ``metering.sweep-notifications`` (singleton) for anyone who wants it more often
(``oncely`` can schedule or trigger it). Per pending row older than ``SETTLE`` and due for a look
(``next_sweep_at``):

* it enqueues a send job under the row's unique key ``metering-notify:{outbox_id}``. The engine
  refuses a second *unfinished* job with one key, so while the previous job is still scheduled,
  retrying or running nothing happens (the row is looked at again after the base delay); once
  that job ended (failed, cancelled, lost) a new one is created;
* the new job starts after a backoff of ``notify_sweep_base_delay * 2**sweeps`` seconds, capped
  at ``notify_sweep_max_delay`` (60 s, 2 min, 4 min … 1 h), and the row records the sweep.

So however long SMTP is down, every pending row gets a new send job at least hourly,
and each (organization, cycle, threshold) is sent once SMTP is back (``notify.deliver`` sends
only while the row is ``pending`` and marks it ``sent`` under its fence). The sweep of all rows
is one fenced transaction; rows are read in pages of ``LIMIT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import oncely
from oncely_billing import db, migrations
from oncely_billing.settings import MeteringSettings

SWEEP_TASK = "metering.sweep-notifications"
SETTLE = timedelta(minutes=2)  # a fresh row's own send job has not even started yet
LIMIT = 5000


@dataclass(frozen=True)
class SweepResult:
    looked_at: int = 0
    requeued: int = 0
    still_running: int = 0
    pending: int = 0


def backoff(settings: MeteringSettings, sweeps: int) -> float:
    """Seconds before the next send attempt of a row already re-queued ``sweeps`` times."""
    return float(min(settings.notify_sweep_max_delay,
                     settings.notify_sweep_base_delay * 2.0 ** min(sweeps, 30)))


def sweep(ctx: oncely.JobContext, settings: MeteringSettings,
          send_task: oncely.Task) -> SweepResult:
    """Re-queue the pending outbox rows whose send job ended (the sweeper task's body)."""
    app = ctx.app
    migrations.ensure_schema(app)
    dialect = db.sql_dialect(app)
    now = ctx.now()
    params = {"now": now.timestamp(), "settled": (now - SETTLE).timestamp(), "limit": LIMIT}
    requeued = running = 0
    with ctx.fenced() as conn:
        rows = db.fetch_all(conn, dialect, "outbox_sweep_due", params)
        for outbox_id, sweeps in rows:
            delay = backoff(settings, int(sweeps))
            handle = app.enqueue_job(send_task, {"outbox_id": int(outbox_id)}, delay=delay,
                                     unique_key=f"metering-notify:{outbox_id}", connection=conn)
            if handle.created:
                requeued += 1
                next_at = now.timestamp() + delay + settings.notify_sweep_base_delay
            else:
                running += 1
                next_at = now.timestamp() + settings.notify_sweep_base_delay
            db.run(conn, dialect, "outbox_sweep_mark",
                   {"outbox_id": int(outbox_id), "added": int(handle.created),
                    "next_at": next_at})
        pending = db.fetch_one(conn, dialect, "outbox_pending_count")
    return SweepResult(len(rows), requeued, running, int(pending[0]) if pending else 0)


def install_sweeper(app: oncely.App, settings: MeteringSettings,
                    send_task: oncely.Task) -> oncely.Task:
    def sweep_notifications(ctx: oncely.JobContext) -> dict[str, Any]:
        return sweep(ctx, settings, send_task).__dict__.copy()

    register = app.task(name=SWEEP_TASK, queue=settings.notify_queue, singleton=True,
                        timeout=600.0, retry=oncely.RetryPolicy(attempts=2, backoff="exponential",
                                                          base_delay=30.0, jitter=True))
    task: oncely.Task = register(sweep_notifications)
    return task
