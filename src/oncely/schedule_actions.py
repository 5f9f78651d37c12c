"""The facade's actions on schedules at run time, mixed into :class:`oncely.App`: pause, resume,
trigger, backfill, delete, apply the declared definition, and dynamic schedules (created, updated
and deleted without a deploy).

Each action changes the stored schedule (the definition in force, see
:mod:`oncely.maintenance.enqueuer`) and emits its event with ``by`` — who asked — which the
store records in the schedule's history (``oncely ledger NAME``, the dashboard's schedule page).

* **pause** is stored: it survives restarts and deploys. While paused, each due slot is recorded
  ``paused`` and the watchdog expects nothing for it. **resume** applies the catch-up policy to
  the slots paused since: ``none`` runs none, ``latest`` the newest, ``all`` the newest
  ``catch_up_limit`` of them.
* **trigger** runs the current slot now, once for the whole fleet, whoever asks.
* **backfill** gives each slot of a range one job (slots never recorded, or recorded ``paused``
  or ``missed``); slots that already ran or have a job are left alone. The jobs wait for the
  task's singleton key one after another, whatever the schedule's overlap and catch-up (the
  claim's policy pass leaves backfilled slots alone), and obey the queue's controls. Ranges
  of more than :data:`BACKFILL_CAP` slots need ``yes=True``; more than :data:`BACKFILL_MAX` are
  refused (backfill them in parts).
* **delete** refuses while a live worker's code declares the schedule, unless ``force``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

from oncely.errors import ConfigError, NotFound
from oncely.maintenance.enqueuer import declare
from oncely.schedules import ScheduleSpec, latest_slot, slots_between
from oncely.store.base import ScheduleRow, SlotEnqueue, UpsertOutcome
from oncely.tasks import JobHandle, ScheduleGuards, Task
from oncely.types import Overlap
from oncely.validate import check_name, check_reason

if TYPE_CHECKING:
    from oncely.clock import Clock
    from oncely.observe.events import EventBus
    from oncely.runtime import Runtime
    from oncely.store.base import Store

BACKFILL_CAP = 1000  # slots one backfill enqueues without yes=True
SPEC_FIELDS = frozenset(f.name for f in fields(ScheduleSpec))
BACKFILL_MAX = 100_000  # slots one backfill enqueues at all


def args_from_json(text: str, option: str = "--args") -> dict[str, Any]:
    """A dynamic schedule's task arguments as typed by an operator (the command line's
    ``--args``, the dashboard's form): a JSON object, or one clear error."""
    try:
        found = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{option} is not JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{option} is nested too deeply") from None
    if not isinstance(found, dict):
        raise ConfigError(f"{option} must be a JSON object, e.g. '{{\"org_id\": 42}}'")
    return found


class ScheduleActions:
    if TYPE_CHECKING:
        clock: Clock
        events: EventBus
        schedules: dict[str, ScheduleSpec]
        tasks: dict[str, Task]
        schedule_guards: ScheduleGuards

        @property
        def store(self) -> Store: ...
        @property
        def runtime(self) -> Runtime: ...
        def get_task(self, name: str) -> Task: ...

    # reading ------------------------------------------------------------------------------
    def stored_schedule(self, name: str) -> tuple[ScheduleRow, ScheduleSpec]:
        """The stored row and the definition in force; NotFound when there is none,
        InvalidSchedule when the stored definition does not parse."""
        row = self._stored_row(name)
        return row, ScheduleSpec.from_spec_dict(row.spec)

    def _stored_row(self, name: str) -> ScheduleRow:
        """The stored row, whether or not its definition is valid (pause, delete and update
        work on an invalid one, so an operator can stop, fix or remove it)."""
        row = self.store.schedule_get(check_name("schedule", name))
        if row is None:
            raise NotFound(f"schedule {name!r} does not exist")
        return row

    # pause and resume ---------------------------------------------------------------------
    def pause_schedule(self, name: str, reason: str | None = None, *,
                       by: str | None = None) -> ScheduleRow:
        """Record each due slot ``paused`` (nothing runs) until :meth:`resume_schedule`;
        ``reason`` is checked like every operator's (:func:`oncely.validate.check_reason`)."""
        reason = check_reason(reason)
        row = self._stored_row(name)
        if not row.paused:
            self.store.schedule_pause(name, self.clock.now(), reason)
        self.events.emit("schedule.paused", schedule=name, reason=reason, by=by)
        return self._stored_row(name)

    def resume_schedule(self, name: str, *, by: str | None = None) -> list[JobHandle]:
        """Fire the schedule again; its catch-up policy decides which paused slots run now."""
        row, spec = self.stored_schedule(name)
        if row.paused_at is None:
            self.events.emit("schedule.resumed", schedule=name, caught_up=0, by=by)
            return []
        keep = {"none": 0, "latest": 1, "all": spec.catch_up_limit}[spec.catch_up]
        paused = []
        for record in self.store.ledger_list(name, limit=max(keep, 1)):
            if record.outcome != "paused" or record.slot < row.paused_at:
                break
            paused.append(record.slot)
        self.store.schedule_pause(name, None, None)
        handles = [h for slot in sorted(paused[:keep])
                   if (h := self._run_slot(spec, slot, "caught up on resume")) is not None]
        self.events.emit("schedule.resumed", schedule=name, caught_up=len(handles), by=by)
        return handles

    # running now --------------------------------------------------------------------------
    def trigger(self, schedule: str, *, by: str | None = None) -> JobHandle | None:
        """Run a schedule's current slot now — once for the whole fleet.

        The job takes the identity of the schedule's newest slot at or before now (of the
        definition in force), so any number of callers and the slot enqueuer produce at most
        one job for that slot. Returns None when that slot already has a job or ran, or when
        the schedule is disabled. A schedule this app declares that is not stored yet (called
        before any worker started) is declared first.
        """
        if schedule in self.schedules and self.store.schedule_get(schedule) is None:
            declare(self.runtime, self.schedules[schedule])
        _, spec = self.stored_schedule(schedule)
        if not spec.enabled:
            return None
        slot = latest_slot(spec, self.clock.now())
        handle = None if slot is None else self._run_slot(spec, slot, None)
        if handle is not None and slot is not None:
            self.events.emit("slot.triggered", schedule=schedule, slot=slot.isoformat(),
                             job_id=handle.id, by=by)
        return handle

    def backfill_schedule(self, name: str, start: datetime, end: datetime, *,
                          yes: bool = False, by: str | None = None) -> list[JobHandle]:
        """One job for each slot in ``(start, end]`` that has none (see the module docstring);
        returns the jobs created, oldest slot first."""
        _, spec = self.stored_schedule(name)
        if end <= start:
            raise ConfigError(f"backfill of {name}: --to must be after --from")
        if end > self.clock.now():
            raise ConfigError(f"backfill of {name}: --to is in the future; future slots are the "
                              "enqueuer's")
        # Counted only up to the limit: a range of centuries of a per-second schedule is
        # refused at once, not listed slot by slot first.
        limit = BACKFILL_MAX if yes else BACKFILL_CAP
        slots = list(islice(slots_between(spec, start, end), limit + 1))
        if len(slots) > BACKFILL_CAP and not yes:
            raise ConfigError(f"backfill of {name}: more than {BACKFILL_CAP} slots; pass --yes "
                              "(yes=True) to enqueue them all")
        if len(slots) > BACKFILL_MAX:
            raise ConfigError(f"backfill of {name}: more than {BACKFILL_MAX:,} slots at once; "
                              "backfill the range in parts")
        handles = [h for slot in slots
                   if (h := self._run_slot(spec, slot, "backfill", Overlap.BUFFER_ONE))
                   is not None]
        self.events.emit("schedule.backfilled", schedule=name, start=start.isoformat(),
                         end=end.isoformat(), slots=len(slots), enqueued=len(handles), by=by)
        return handles

    def _run_slot(self, spec: ScheduleSpec, slot: datetime, note: str | None,
                  overlap: Overlap | None = None) -> JobHandle | None:
        """Give ``slot`` its job now unless it has one or ran: a new ledger row, or a row
        recorded paused or missed."""
        now = self.clock.now()
        task = self.get_task(spec.task)
        job = task.slot_insert(spec, now, run_at=now, overlap=overlap)
        params = SlotEnqueue(spec.name, slot, now, job=job, note=note)
        result = self.store.slot_enqueue(params)
        if not result.created:
            result = self.store.slot_run_unrun(params)
        if not result.created or result.job_id is None:
            return None
        found = self.store.job_get(result.job_id)
        assert found is not None
        self.store.notify_work(found.queue)
        self.events.emit("job.enqueued", job_id=found.id, task=found.task)
        return JobHandle(self, found, True)  # type: ignore[arg-type]

    # definitions --------------------------------------------------------------------------
    def apply_schedule(self, name: str, *, by: str | None = None) -> UpsertOutcome:
        """Put the definition this app's code declares in force as a new revision, even one the
        schedule held before (going back after a rolling deploy)."""
        spec = self.schedules.get(name)
        if spec is None:
            known = ", ".join(sorted(self.schedules)) or "none"
            raise NotFound(f"this app declares no schedule {name!r}; declared: {known}")
        outcome = declare(self.runtime, spec, force=True, by=by)
        self.schedule_guards.forget()
        return outcome

    def create_schedule(self, name: str, task: str, *, by: str | None = None,
                        **definition: Any) -> ScheduleRow:
        """A dynamic schedule, stored like a declared one: cron= or every=, args=, tz=,
        overlap=, catch_up=, … as :meth:`oncely.App.schedule`. Refused if the name is taken."""
        existing = self.store.schedule_get(check_name("schedule", name))
        if existing is not None:
            raise ConfigError(f"schedule {name!r} exists already ({existing.origin}): "
                              + ("update it" if existing.origin == "dynamic" else
                                 "a declared schedule is changed by a deploy or `apply`"))
        return self._store_dynamic(self._dynamic_spec(name, task, definition), by)

    def update_schedule(self, name: str, *, by: str | None = None,
                        **changes: Any) -> ScheduleRow:
        """A new revision of a dynamic schedule: its stored definition with ``changes``."""
        row = self._stored_row(name)
        if row.origin != "dynamic":
            raise ConfigError(f"schedule {name!r} is declared by code: change it with a deploy "
                              "(or `oncely schedules apply`), not update")
        # The stored fields, valid or not (an invalid stored definition is fixed by updating
        # the fields that are wrong), with the changes over them.
        stored = row.spec if isinstance(row.spec, Mapping) else {}
        data = {key: value for key, value in stored.items() if key in SPEC_FIELDS} | changes
        if "cron" in changes:
            data["every"] = None
        if "every" in changes:
            data["cron"] = None
        data.pop("name", None)
        return self._store_dynamic(self._dynamic_spec(name, data.pop("task", row.task), data),
                                   by)

    def _dynamic_spec(self, name: str, task: object, definition: dict[str, Any]) -> ScheduleSpec:
        """The definition an operator gives (the command line, the API, the form), validated as
        every definition is (:mod:`oncely.schedules`), and its args against the task."""
        resolved = self.get_task(check_name("task", task))
        spec = ScheduleSpec.from_spec_dict({**definition, "name": name, "task": resolved.name})
        resolved.build_insert(spec.args, self.clock.now(), queue=spec.queue,
                              priority=spec.priority or None, scheduled=True)  # args, queue
        return spec

    def _store_dynamic(self, spec: ScheduleSpec, by: str | None) -> ScheduleRow:
        outcome = declare(self.runtime, spec, origin="dynamic", force=True, by=by)
        self.schedule_guards.forget()  # this app's next manual job of the task takes its key
        if outcome == UpsertOutcome.REFUSED:
            raise ConfigError(f"schedule {spec.name!r} is declared by code; not overwritten")
        return self.stored_schedule(spec.name)[0]

    def delete_schedule(self, name: str, *, force: bool = False, by: str | None = None) -> None:
        """Delete a stored schedule (its ledger and history stay). Refused while a live worker's
        code declares it — it would come back at that worker's next start — unless ``force``."""
        row = self._stored_row(name)
        declaring = self.declaring_workers(name)
        if declaring and not force:
            raise ConfigError(f"schedule {name!r} is declared by live worker(s) "
                              f"{', '.join(declaring)}; deploy code without it, or pass --force")
        self.store.schedule_delete(name)
        self.schedule_guards.forget()
        self.events.emit("schedule.deleted", schedule=name, origin=row.origin,
                         forced=bool(declaring), by=by)

    def declaring_workers(self, name: str) -> list[str]:
        """Live workers whose code declares schedule ``name``."""
        now = self.clock.now()
        stale = timedelta(seconds=self.runtime.settings.lease_ttl * 3)
        return [w.worker_id for w in self.store.worker_list()
                if w.declared and name in w.declared and now - w.last_seen_at <= stale]
