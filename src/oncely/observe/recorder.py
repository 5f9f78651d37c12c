"""Events that must be counted fleet-wide are also written to the store.

A fence rejection happens inside one worker process; its per-process counter dies with the
process and says nothing about the fleet. The subscriber returned by :func:`fleet_recorder`
records each ``fence.rejected`` event in ``oncely_events`` so the dashboard's fleet metrics,
the doctor and the watchdog see every rejection, from every worker. (Lease takeovers are
recorded by the database itself, see migration 0002.) What deploys and operators do to a
schedule (revisions, superseded declarations, pause, resume, trigger, backfill, delete, dynamic
schedules) is recorded too, under the subject ``schedule:NAME``: the schedule's history, shown by
``oncely ledger`` and the dashboard. A store that is down loses the record, never the job: the
subscriber swallows store errors.

Operator actions (pause, resume, retry, cancel, resolve) are recorded too, with who asked
(``by``) as their subject, so the dashboard and whoever looks next see who did what, and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from oncely.errors import OncelyError
from oncely.observe.events import Event, Subscriber
from oncely.store.base import Store
from oncely.store.observability import FENCE_REJECTED, FleetEventInsert

log = logging.getLogger("oncely")

OPERATOR_ACTIONS = frozenset({
    "queue.paused", "queue.resumed", "job.retry_requested", "job.cancel_requested",
    "job.dead_letters_retried", "anomaly.resolved",
})
RECORDED = frozenset({FENCE_REJECTED}) | OPERATOR_ACTIONS

# The history of a schedule, recorded under the subject "schedule:NAME".
SCHEDULE_HISTORY = frozenset({
    "schedule.registered", "schedule.revised", "schedule.declaration_superseded",
    "schedule.declaration_refused", "schedule.paused", "schedule.resumed", "schedule.deleted",
    "schedule.backfilled", "slot.triggered", "schedule.invalid",
})
# Every event the fleet recorder writes: subscribe it to these alone (``names=``).
FLEET_EVENTS = RECORDED | SCHEDULE_HISTORY


def fleet_recorder(store: Callable[[], Store]) -> Subscriber:
    """``store`` opens the store on first use (the App's). Subscribe it with
    ``names=FLEET_EVENTS``: it ignores every other event."""

    def record(event: Event) -> None:
        if event.name not in FLEET_EVENTS:
            return
        fields = dict(event.fields)
        job_id = fields.pop("job_id", None)
        task = fields.pop("task", None)
        if event.name in SCHEDULE_HISTORY:
            fields["worker_id"] = f"schedule:{fields.pop('schedule', '')}"
        try:
            store().event_record(FleetEventInsert(
                event.name, event.at, job_id=job_id if isinstance(job_id, int) else None,
                task=task if isinstance(task, str) else None,
                subject=str(fields.pop("worker_id", "") or fields.pop("by", "") or "") or None,
                detail={key: value for key, value in fields.items()
                        if isinstance(value, str | int | float | bool) or value is None},
            ))
        except OncelyError as exc:
            log.debug("could not record %s in the store: %s", event.name, exc)

    return record
