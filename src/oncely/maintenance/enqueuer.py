"""The slot enqueuer: every due slot of every stored schedule becomes one job, or one ledger
outcome, exactly once — planned from the definition stored in force, never from a worker's own
copy.

One definition in force
=======================

A schedule's row holds the definition in force, its revision, and the hash of every definition
it has held (revision r is the r-th hash). Code *declares* a definition (each worker registers
its app's schedules as it starts); an operator *applies* one (``oncely schedules apply NAME``)
or creates, updates and deletes dynamic schedules (origin ``dynamic``). With ``h`` the declared
hash and ``cur`` the hash in force::

    (no row) ──declare h──────────────────► rev 1, hashes [h]      schedule.registered
    rev r ──declare h == cur──────────────► rev r, declared_at     (nothing)
    rev r ──declare h never held──────────► rev r+1, hashes + [h]  schedule.revised
    rev r ──declare h held before─────────► rev r, unchanged       schedule.declaration_superseded
    rev r ──apply h != cur (operator)─────► rev r+1, hashes + [h]  schedule.revised (by)
    rev r ──declare, other origin─────────► unchanged              schedule.declaration_refused

So in a rolling deploy the first new worker revises the schedule, old and new workers alike fire
the new revision from then on, and a restarted old worker never brings the old definition back;
going back is the operator's ``apply``. Each worker records the hash it declares per schedule on
its worker row, so ``oncely schedules``, the dashboard and ``oncely doctor`` name the live
workers whose code disagrees with the definition in force.

One switch at the cursor
========================

``run_once`` reads every stored schedule whose task this process has (others are left to the
workers that have it), parses its definition once per hash, asks
:func:`oncely.schedules.plan_slots` what to do with the slots after the cursor, and records each
slot through ``slot_enqueue`` guarded by the revision and cursor it planned from: in the slot's
own transaction the cursor moves to that slot only if the schedule is still at that revision and
cursor, else nothing is recorded and the schedule is re-read next run. A revision therefore takes
effect exactly at the cursor: every slot up to it came from the old definition, every slot after
it from the new one. The revision remembers that cursor (``switch_cursor``); the new definition's
slots less than one of its periods after it are recorded ``coalesced`` (into the old definition's
last run), so runs are never closer together than the period in force.

A paused schedule (``oncely schedules pause``) records each due slot ``paused``; the watchdog
expects nothing for those. Registration enqueues nothing; it gives the waiting manual jobs of a
guarded task that have no singleton key the key of the schedule's runs (:mod:`oncely.tasks`).

One bad schedule stops nothing else
===================================

Each schedule is planned and recorded on its own: a stored definition that does not parse (an
older release's, or one written straight into the store — every path of this release validates
it, :mod:`oncely.schedules`), or a slot its task refuses (args the task no longer takes), skips
that schedule alone. It is reported once per definition and kind of error as ``schedule.invalid``
(WARNING in the log, and in the schedule's history); ``oncely schedules``, the dashboard and
``oncely doctor`` show it invalid. Only a store that is down stops the whole run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import islice

from oncely.errors import (
    InvalidSchedule,
    OncelyError,
    SchemaMismatch,
    StoreBusy,
    StoreUnavailable,
)
from oncely.runtime import Runtime
from oncely.schedules import (
    MAX_SLOTS_PER_PLAN,
    ScheduleSpec,
    jitter_for,
    period_hint,
    plan_slots,
    slots_between,
)
from oncely.store.base import ScheduleRow, ScheduleUpsert, SlotEnqueue, UpsertOutcome
from oncely.types import Overlap, SlotOutcome

log = logging.getLogger("oncely.maintenance")

Decision = tuple[datetime, SlotOutcome]


@dataclass(frozen=True)
class EnqueueResult:
    enqueued: list[tuple[str, datetime]] = field(default_factory=list)
    recorded: list[tuple[str, datetime, SlotOutcome]] = field(default_factory=list)


def declare(runtime: Runtime, spec: ScheduleSpec, *, origin: str = "declared",
            force: bool = False, by: str | None = None) -> UpsertOutcome:
    """One declaration (or an operator's apply/create/update) through the state machine above,
    with its event."""
    store = runtime.store
    digest = spec.spec_hash()
    outcome = store.schedule_upsert(ScheduleUpsert(spec.name, spec.task, spec.to_spec_dict(),
                                                   digest, runtime.clock.now(), origin, force))
    row = store.schedule_get(spec.name)
    revision = row.revision if row else None
    if row is not None:
        _key_waiting_manual_jobs(runtime, row)
    events = runtime.events
    if outcome == UpsertOutcome.CREATED:
        events.emit("schedule.registered", schedule=spec.name, task=spec.task, origin=origin,
                    revision=revision, by=by)
    elif outcome == UpsertOutcome.UPDATED:
        events.emit("schedule.revised", schedule=spec.name, task=spec.task, origin=origin,
                    revision=revision, spec_hash=digest, by=by)
    elif outcome == UpsertOutcome.SUPERSEDED:
        events.emit("schedule.declaration_superseded", schedule=spec.name,
                    declared_revision=row.revision_of(digest) if row else None,
                    in_force_revision=revision, by=by)
    elif outcome == UpsertOutcome.REFUSED:
        events.emit("schedule.declaration_refused", schedule=spec.name, origin=origin,
                    stored_origin=row.origin if row else None, by=by)
    return outcome


def _key_waiting_manual_jobs(runtime: Runtime, row: ScheduleRow) -> None:
    """The stored schedule guards its task: the task's manual jobs enqueued before anyone knew
    (an enqueue at import above the ``app.schedule`` line, a process's stale read) and still
    waiting take the key its runs hold (:mod:`oncely.tasks`)."""
    task = runtime.tasks.get(row.task)
    if (task is None or task.options.singleton is not None
            or row.spec.get("overlap") == Overlap.ALLOW.value):
        return
    key = task.singleton_key({}, scheduled=True)
    if key is not None:
        runtime.store.job_key_waiting(task.name, key)


def register_schedules(runtime: Runtime, worker_id: str | None = None) -> dict[str, UpsertOutcome]:
    """Declare every schedule the app declares; record the hashes on the worker's row; report
    stored declared schedules this app no longer declares."""
    outcomes = {name: declare(runtime, spec) for name, spec in runtime.schedules.items()}
    if worker_id is not None:
        runtime.store.worker_declare(
            worker_id, {name: spec.spec_hash() for name, spec in runtime.schedules.items()})
    for row in runtime.store.schedule_list():
        if row.origin == "declared" and row.name not in runtime.schedules:
            runtime.events.emit("schedule.undeclared", schedule=row.name, task=row.task,
                                declared_at=row.declared_at.isoformat())
    return outcomes


class SpecCache:
    """Parsed definitions by hash: a definition is parsed once per process; one that does not
    parse is remembered with its reason (:class:`InvalidSchedule`)."""

    def __init__(self) -> None:
        self._specs: dict[str, ScheduleSpec | str] = {}

    def get(self, row: ScheduleRow) -> ScheduleSpec:
        """The row's definition, or InvalidSchedule saying why it has none."""
        if row.spec_hash not in self._specs:
            try:
                self._specs[row.spec_hash] = ScheduleSpec.from_spec_dict(row.spec)
            except InvalidSchedule as exc:
                self._specs[row.spec_hash] = str(exc)
        found = self._specs[row.spec_hash]
        if isinstance(found, str):
            raise InvalidSchedule(found)
        return found


# The store itself is out: every schedule would fail alike. The run stops; the supervisor
# reports it once (``maintenance.failed``), not once per schedule.
_STORE_DOWN = (StoreUnavailable, StoreBusy, SchemaMismatch)


class SlotEnqueuer:
    """Enqueues the due slots of every stored schedule. One schedule that cannot be fired (a
    stored definition that does not parse — an older release's, or one written straight into
    the store — or a slot its task refuses) is skipped and reported, once per definition and
    kind of error, as ``schedule.invalid`` (logged at WARNING, kept in the schedule's history);
    every other schedule keeps firing."""

    def __init__(self, runtime: Runtime, max_batches: int = 10) -> None:
        self.runtime = runtime
        self.max_batches = max_batches  # plans per schedule per run; a long outage takes a few
        self.specs = SpecCache()
        self._reported: dict[str, tuple[str, str]] = {}  # schedule -> (spec hash, error type)

    def run_once(self) -> EnqueueResult:
        result = EnqueueResult()
        failing: set[str] = set()
        for row in self.runtime.store.schedule_list():
            if row.task not in self.runtime.tasks:
                continue  # a worker that has the task fires it
            try:
                spec = self.specs.get(row)
                cursor = row.cursor
                for _ in range(self.max_batches):
                    cursor, more = self._schedule_once(row, spec, cursor, result)
                    if not more:
                        break
            except _STORE_DOWN:
                raise
            except Exception as exc:  # this schedule alone: the others still fire
                failing.add(row.name)
                self._report(row, exc)
        for name in set(self._reported) - failing:
            del self._reported[name]  # fires again (or is gone): a new failure is news
        return result

    def _report(self, row: ScheduleRow, exc: Exception) -> None:
        seen = (row.spec_hash, type(exc).__name__)
        if self._reported.get(row.name) == seen:
            return  # said already for this definition: no flood, one line per change
        self._reported[row.name] = seen
        reason = str(exc) if isinstance(exc, OncelyError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, OncelyError):
            log.debug("schedule %s: enqueuing failed", row.name, exc_info=exc)
        self.runtime.events.emit("schedule.invalid", schedule=row.name, task=row.task,
                                 revision=row.revision, error=reason[:1000])

    def _decide(self, row: ScheduleRow, spec: ScheduleSpec, cursor: datetime | None,
                now: datetime) -> tuple[list[Decision], datetime | None, bool]:
        """The slots after the cursor with their outcomes, the cursor after them, and whether
        more slots wait."""
        if row.paused:
            start = cursor or row.created_at
            slots = list(islice(slots_between(spec, start, now), MAX_SLOTS_PER_PLAN + 1))
            batch = slots[:MAX_SLOTS_PER_PLAN]
            return ([(slot, SlotOutcome.PAUSED) for slot in batch],
                    batch[-1] if batch else cursor, len(slots) > len(batch))
        plan = plan_slots(spec, cursor, now, row.created_at)
        decisions = [(slot, SlotOutcome.ENQUEUED) for slot in plan.run]
        decisions += [(slot, SlotOutcome.MISSED) for slot in plan.missed]
        decisions += [(slot, SlotOutcome.COALESCED) for slot in plan.coalesced]
        if cursor is not None and cursor == row.switch_cursor:
            # The first slots of a new revision: none closer than its period to the last run.
            earliest = cursor + timedelta(seconds=period_hint(spec))
            decisions = [(slot, SlotOutcome.COALESCED if slot < earliest else outcome)
                         for slot, outcome in decisions]
        return sorted(decisions), plan.new_cursor, plan.more

    def _schedule_once(
        self, row: ScheduleRow, spec: ScheduleSpec, cursor: datetime | None,
        result: EnqueueResult,
    ) -> tuple[datetime | None, bool]:
        """Plan and record one batch; returns the new cursor and whether more slots wait."""
        runtime = self.runtime
        now = runtime.clock.now()
        decisions, new_cursor, more = self._decide(row, spec, cursor, now)
        task = runtime.tasks[spec.task]
        for slot, outcome in decisions:
            job = None
            if outcome == SlotOutcome.ENQUEUED:
                run_at = slot + timedelta(seconds=jitter_for(spec, slot))
                job = task.slot_insert(spec, now, run_at=run_at)
                job = replace(job, catch_up=spec.catch_up,  # judged again at claim
                              misfire_grace=spec.effective_misfire_grace)
            recorded = runtime.store.slot_enqueue(SlotEnqueue(
                spec.name, slot, now, job=job, outcome=outcome, revision=row.revision,
                expected_cursor=cursor))
            if recorded.stale:
                return cursor, False  # revised, or another enqueuer went first: re-read
            cursor = slot
            if not recorded.created:
                continue
            if job is not None:
                result.enqueued.append((spec.name, slot))
                runtime.events.emit("slot.enqueued", schedule=spec.name, slot=slot.isoformat(),
                                    job_id=recorded.job_id, revision=row.revision)
            else:
                result.recorded.append((spec.name, slot, outcome))
                runtime.events.emit(f"slot.{outcome}", schedule=spec.name, slot=slot.isoformat())
        if new_cursor is None or (cursor is not None and new_cursor <= cursor):
            return cursor, more and cursor is not None
        if not runtime.store.schedule_advance(spec.name, cursor, new_cursor, row.revision):
            return cursor, False
        return new_cursor, more
