"""The declared queue controls in the store: a worker upserts its app's queues and task limits as
it starts (:func:`register_controls`), and operators bring dead letters back
(:func:`retry_dead_letters`). The declarations themselves are :mod:`oncely.queues`."""

from __future__ import annotations

from datetime import datetime

from oncely.queues import hash_document
from oncely.runtime import Runtime
from oncely.store.base import RetryFailed, UpsertOutcome
from oncely.store.controls import ControlKind, ControlUpsert
from oncely.tasks import Task


def task_control(task: Task, now: datetime) -> ControlUpsert:
    """The control row a task's options declare (every limit None when it has none)."""
    options = task.options
    document = {
        "rate": None if options.limit is None else [options.limit.count, options.limit.window],
        "max_per_key": options.max_per_key,
    }
    return ControlUpsert(
        ControlKind.TASK, task.name, now, max_per_key=options.max_per_key,
        rate_limit=None if options.limit is None else options.limit.count,
        rate_window=None if options.limit is None else options.limit.window,
        spec_hash=hash_document(document),
    )


def register_controls(runtime: Runtime) -> dict[str, UpsertOutcome]:
    """Upsert the queues the app declares and the limits of its tasks (clearing the stored
    limits of a task that no longer declares any). Called by every worker as it starts."""
    now = runtime.clock.now()
    stored = {c.scope: c for c in runtime.store.control_list()}
    outcomes: dict[str, UpsertOutcome] = {}
    declared = [spec.upsert(now) for spec in runtime.queues.values()]
    for task in runtime.tasks.values():
        params = task_control(task, now)
        limited = params.rate_limit is not None or params.max_per_key is not None
        previous = stored.get(f"{ControlKind.TASK}:{task.name}")
        if limited or (previous is not None and previous.active):
            declared.append(params)
    for params in declared:
        outcome = runtime.store.control_upsert(params)
        outcomes[f"{params.kind}:{params.name}"] = outcome
        fields = {
            "kind": str(params.kind),
            "name": params.name,
            "max_running": params.max_running,
            "max_per_key": params.max_per_key,
            "limit": None if params.rate_limit is None
            else f"{params.rate_limit}/{params.rate_window:g}s",
        }
        if outcome == UpsertOutcome.CREATED:
            runtime.events.emit("control.registered", **fields)
        elif outcome == UpsertOutcome.UPDATED:
            runtime.events.emit("control.updated", **fields)
    return outcomes


def retry_dead_letters(
    runtime: Runtime, queue: str | None = None, task: str | None = None, batch: int = 500
) -> tuple[int, list[int]]:
    """Make every failed job (of ``queue``/``task``) available again, a batch per transaction;
    returns how many were retried and the ids left failed because another unfinished job holds
    their unique key."""
    retried, conflicts, after = 0, [], 0
    woken: set[str] = set()
    while True:
        result = runtime.store.job_retry_failed(
            RetryFailed(runtime.clock.now(), queue, task, after_id=after, limit=batch)
        )
        retried += len(result.retried)
        conflicts.extend(result.conflicts)
        woken.update(job.queue for job in result.retried)
        if result.last_id is None:
            break
        after = result.last_id
    for name in sorted(woken):
        runtime.store.notify_work(name)
    return retried, conflicts
