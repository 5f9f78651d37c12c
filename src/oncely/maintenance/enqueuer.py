"""The slot enqueuer: every due slot of every declared schedule becomes one job, or one ledger
outcome, exactly once.

Registration (at worker start) upserts each declared schedule by name: ten workers registering
the same definition leave one row; a changed definition updates it and says so; a schedule that
is in the store but no longer declared by this app is reported (``schedule.undeclared``) and
simply stops firing once no running worker declares it. Registration enqueues nothing.

``run_once`` for each enabled declared schedule reads its cursor (the newest slot already dealt
with), asks :func:`oncely.schedules.plan_slots` what to do with the slots after it up to now,
records each slot through ``slot_enqueue`` — the ledger's ``UNIQUE(schedule, slot)`` makes a slot
a job at most once whoever records it first — and moves the cursor with a compare-and-set. Every
worker runs this: two enqueuers racing for a slot produce one job and one ledger row, and slots
keep flowing while leadership changes hands.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from oncely.runtime import Runtime
from oncely.schedules import ScheduleSpec, jitter_for, plan_slots
from oncely.store.base import ScheduleUpsert, SlotEnqueue, UpsertOutcome
from oncely.types import SlotOutcome


@dataclass(frozen=True)
class EnqueueResult:
    enqueued: list[tuple[str, datetime]] = field(default_factory=list)
    recorded: list[tuple[str, datetime, SlotOutcome]] = field(default_factory=list)


def register_schedules(runtime: Runtime) -> dict[str, UpsertOutcome]:
    """Upsert every schedule the app declares; report the ones it no longer declares."""
    now = runtime.clock.now()
    outcomes: dict[str, UpsertOutcome] = {}
    for spec in runtime.schedules.values():
        outcome = runtime.store.schedule_upsert(
            ScheduleUpsert(spec.name, spec.task, spec.to_spec_dict(), spec.spec_hash(), now)
        )
        outcomes[spec.name] = outcome
        if outcome == UpsertOutcome.CREATED:
            runtime.events.emit("schedule.registered", schedule=spec.name, task=spec.task)
        elif outcome == UpsertOutcome.UPDATED:
            runtime.events.emit("schedule.updated", schedule=spec.name, task=spec.task)
    for row in runtime.store.schedule_list():
        if row.name not in runtime.schedules:
            runtime.events.emit("schedule.undeclared", schedule=row.name, task=row.task,
                                declared_at=row.declared_at.isoformat())
    return outcomes


class SlotEnqueuer:
    def __init__(self, runtime: Runtime, max_batches: int = 10) -> None:
        self.runtime = runtime
        self.max_batches = max_batches  # plans per schedule per run; a long outage takes a few

    def run_once(self) -> EnqueueResult:
        result = EnqueueResult()
        rows = {row.name: row for row in self.runtime.store.schedule_list()}
        for spec in self.runtime.schedules.values():
            row = rows.get(spec.name)
            if row is None:
                continue
            cursor = row.cursor
            for _ in range(self.max_batches):
                cursor, more = self._schedule_once(spec, cursor, row.created_at, result)
                if not more:
                    break
        return result

    def _schedule_once(
        self, spec: ScheduleSpec, cursor: datetime | None, created_at: datetime,
        result: EnqueueResult,
    ) -> tuple[datetime | None, bool]:
        """Plan and record one batch; returns the new cursor and whether more slots wait."""
        runtime = self.runtime
        now = runtime.clock.now()
        plan = plan_slots(spec, cursor, now, created_at)
        if plan.new_cursor is None or plan.new_cursor == cursor:
            return cursor, False
        task = runtime.tasks.get(spec.task)
        decisions = [(slot, SlotOutcome.ENQUEUED) for slot in plan.run]
        decisions += [(slot, SlotOutcome.MISSED) for slot in plan.missed]
        decisions += [(slot, SlotOutcome.COALESCED) for slot in plan.coalesced]
        for slot, outcome in sorted(decisions):
            job = None
            if outcome == SlotOutcome.ENQUEUED and task is not None:
                run_at = slot + timedelta(seconds=jitter_for(spec, slot))
                job = task.build_insert(spec.args, now, run_at=run_at, queue=spec.queue,
                                        priority=spec.priority or None, scheduled=True,
                                        overlap=spec.overlap)
                job = replace(job, catch_up=spec.catch_up,  # judged again at claim
                              misfire_grace=spec.effective_misfire_grace)
            elif outcome == SlotOutcome.ENQUEUED:
                outcome = SlotOutcome.MISSED  # a task this process cannot build a job for
            recorded = runtime.store.slot_enqueue(
                SlotEnqueue(spec.name, slot, now, job=job, outcome=outcome)
            )
            if not recorded.created:
                continue
            if job is not None:
                result.enqueued.append((spec.name, slot))
                runtime.events.emit("slot.enqueued", schedule=spec.name, slot=slot.isoformat(),
                                    job_id=recorded.job_id)
            else:
                result.recorded.append((spec.name, slot, outcome))
                runtime.events.emit(f"slot.{outcome}", schedule=spec.name, slot=slot.isoformat())
        if not runtime.store.schedule_advance(spec.name, cursor, plan.new_cursor):
            return cursor, False  # another enqueuer moved it first: re-read next run
        return plan.new_cursor, plan.more
