"""Tasks: a named handler plus the options its jobs get, and the handle ``enqueue`` returns.

A handler is a plain function ``def handler(ctx, **args)`` (``async def`` works too). Options:

* ``queue`` — the queue its jobs go to (default ``"default"``);
* ``retry`` — a :class:`~oncely.retry.RetryPolicy` (default: one attempt, no retry);
* ``timeout`` — seconds an attempt may run before it is stopped and counted as failed (a
  positive, finite number). A handler in a thread is asked to stop (``ctx.cancelled``); one that
  ignores it keeps its job, its lease and its singleton key until it returns (the worker goes on
  with a new handler thread);
* ``isolation`` — ``"thread"`` (the default: the handler runs in one of the worker's threads) or
  ``"process"``: each attempt runs in a child process that is killed at its timeout, on a lost
  lease, on cancel and at shutdown (:mod:`oncely.worker.isolation` says what its context offers);
* ``singleton`` — ``True`` (one running job per task), a key template such as ``"org:{org_id}"``
  (one per distinct value, formatted from the job's args), or ``None`` (the default: singleton
  when the task is scheduled — its slot runs and its manual jobs share the key, so a "run it
  now" enqueue waits for a slot run instead of overlapping it; a schedule with
  ``overlap="allow"`` does not count). ``False`` disables it even for schedules. Which tasks
  are scheduled is :class:`ScheduleGuards`' answer (below);
* ``priority`` — higher runs first;
* ``limit`` — at most ``(n, window)`` starts of the task per window, fleet-wide;
* ``concurrency_key`` / ``max_per_key`` — at most ``max_per_key`` (default 1) running jobs per
  value of the key template (``"org:{org_id}"``, formatted from the job's args, with the
  handler's defaults for args not given), fleet-wide. See :mod:`oncely.queues`.

Args must fit the handler: every arg is one it takes (or it takes ``**kwargs``) and every
parameter without a default is given. :class:`HandlerArgs` reads that from the handler's signature
once, at definition (where a handler that cannot take the context first is refused); an enqueue,
a schedule's definition and each of its slots are refused with :class:`~oncely.errors.ArgsMismatch`
when they do not fit, and a worker fails such a job for good without calling the handler (one
stored by a release whose handler took other args: a retry would fail the same way).

Enqueue rules: ``unique_key`` makes a second enqueue a no-op that returns the existing job while
that job is unfinished (scheduled, available, running or retryable); once it has finished, the
same key enqueues a new job.

Manual jobs of a scheduled task
===============================

A manual job of a task left at ``singleton=None`` takes the key of the schedule's runs (the task's
name) when a schedule runs the task with overlap other than ``allow``. That does not depend on
where, or whether, this process declares the schedule:

* **at enqueue** the App asks its :class:`ScheduleGuards`: the schedules this app declares (read
  then, so an ``app.schedule`` anywhere in the module counts once it has run) and the *stored*
  schedules — dynamic ones, and those other deploys declared — read from the store at most once
  per :data:`GUARD_REFRESH` seconds per process, and again at once after this app creates,
  updates, applies or deletes one;
* **when a schedule is stored** (a worker registering its app's schedules at start, ``apply``,
  ``create``, ``update``), the waiting manual jobs of its task that have no key take it
  (:meth:`oncely.store.base.Store.job_key_waiting`): a ``task.enqueue()`` at import *above* the
  module's ``app.schedule(...)`` on a store that never held the schedule takes the key when the
  worker registers its schedules, before its first claim.

What is left: a manual job that *started* before its task's first schedule was stored keeps
running without the key; and a process that enqueues within :data:`GUARD_REFRESH` seconds after
*another* process stored the task's first schedule may still read "not scheduled" and enqueue
a plain job (it takes the key only if a registration of that schedule — a worker starting —
finds it still waiting).
"""

from __future__ import annotations

import inspect
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from oncely.errors import ArgsMismatch, ConfigError
from oncely.queues import Rate
from oncely.retry import NO_RETRY, RetryPolicy
from oncely.store.base import JobInsert
from oncely.store.controls import concurrency_key
from oncely.types import Job, JobState, Overlap
from oncely.validate import INT32, check_delay, check_int, check_name, encode_args

if TYPE_CHECKING:
    from oncely.app import App
    from oncely.schedules import ScheduleSpec
    from oncely.store.base import ScheduleRow

ENQUEUE_OPTIONS = frozenset(
    {"run_at", "delay", "priority", "unique_key", "queue", "connection", "max_attempts"}
)


@dataclass(frozen=True)
class TaskOptions:
    queue: str = "default"
    retry: RetryPolicy = NO_RETRY
    timeout: float | None = None
    singleton: bool | str | None = None
    priority: int = 0
    limit: Rate | None = None
    concurrency_key: str | None = None
    max_per_key: int | None = None
    isolation: str = "thread"


ISOLATIONS = ("thread", "process")


class Task:
    """A registered handler. Call ``enqueue(**args)`` to request a run."""

    def __init__(
        self, app: App, name: str, fn: Callable[..., Any], options: TaskOptions
    ) -> None:
        self.app = app
        self.name = check_name("task", name)
        self.fn = fn
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        timeout = options.timeout
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, int | float)
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise ConfigError(f"task {name!r}: timeout must be a positive, finite number of "
                              f"seconds, got {timeout!r}")
        if options.isolation not in ISOLATIONS:
            raise ConfigError(f"task {name!r}: isolation must be one of {', '.join(ISOLATIONS)}, "
                              f"got {options.isolation!r}")
        if options.isolation == "process":
            _check_importable(name, fn)
        if isinstance(options.singleton, str):
            _template_fields(name, options.singleton)
        self.handler_args = HandlerArgs(self.name, fn)
        self._defaults: dict[str, Any] = {}
        if options.concurrency_key is not None:
            _check_key_template(name, self.handler_args, options.concurrency_key)
            self._defaults = self.handler_args.defaults
        elif options.max_per_key is not None:
            raise ConfigError(f"task {name!r}: max_per_key needs a concurrency_key template, "
                              'such as concurrency_key="org:{org_id}"')

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue}>"

    def singleton_key(self, args: dict[str, Any], scheduled: bool = False) -> str | None:
        """The job's singleton key; ``scheduled``: a slot run, or a manual job of a task a
        schedule guards (what ``singleton=None`` keys on)."""
        singleton = self.options.singleton
        if singleton is None:
            return self.name if scheduled else None
        if singleton is False:
            return None
        if singleton is True:
            return self.name
        try:
            return f"{self.name}:" + singleton.format(**args)
        except (KeyError, IndexError) as exc:
            raise ConfigError(
                f"task {self.name!r}: singleton key {singleton!r} names argument {exc}, "
                "which this job does not have"
            ) from None

    def check_args(self, args: Mapping[str, Any]) -> None:
        """ArgsMismatch unless ``args`` fit the handler (see :class:`HandlerArgs`)."""
        problem = self.handler_args.mismatch(args)
        if problem is not None:
            raise ArgsMismatch(f"task {self.name!r}: {problem}")

    def concurrency_key(self, args: dict[str, Any]) -> str | None:
        template = self.options.concurrency_key
        if template is None:
            return None
        try:
            return concurrency_key(self.name, template.format(**{**self._defaults, **args}))
        except (KeyError, IndexError, AttributeError) as exc:
            raise ConfigError(
                f"task {self.name!r}: concurrency_key {template!r} names argument {exc}, "
                "which this job does not have"
            ) from None

    def build_insert(
        self,
        args: dict[str, Any],
        now: datetime,
        *,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        scheduled: bool = False,
        overlap: Overlap = Overlap.SKIP,
    ) -> JobInsert:
        if run_at is not None and delay is not None:
            raise ConfigError("give either run_at or delay, not both")
        if delay is not None:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
            run_at = now + timedelta(seconds=check_delay(seconds))
        if run_at is not None and run_at.tzinfo is None:
            raise ConfigError("run_at must be timezone-aware (e.g. datetime.now(UTC))")
        stored, text = encode_args(self.name, args)
        queue = check_name("queue", self.options.queue if queue is None else queue)
        priority = check_int("priority", self.options.priority if priority is None
                             else priority, *INT32)
        max_attempts = check_int("max_attempts", max_attempts
                                 or self.options.retry.max_attempts, 1, INT32[1])
        unique_key = None if unique_key is None else check_name("unique key", unique_key)
        self.check_args(stored)  # before the keys: a missing argument is named as such
        key = None if overlap == Overlap.ALLOW else self.singleton_key(stored, scheduled)
        concurrency = self.concurrency_key(stored)
        return JobInsert(
            task=self.name,
            queue=queue,
            args=stored,
            priority=priority,
            run_at=run_at,
            max_attempts=max_attempts,
            unique_key=unique_key,
            singleton_key=None if key is None else check_name("singleton key", key),
            overlap=overlap,
            timeout=self.options.timeout,
            concurrency_key=None if concurrency is None
            else check_name("concurrency key", concurrency),
            args_json=text,
        )

    def slot_insert(self, spec: ScheduleSpec, now: datetime, *, run_at: datetime | None = None,
                    overlap: Overlap | None = None) -> JobInsert:
        """The job of one slot of ``spec``: its args, queue and priority, keyed as a scheduled
        job under the schedule's overlap policy (or ``overlap``), checked as every job is."""
        return self.build_insert(spec.args, now, run_at=run_at, queue=spec.queue,
                                 priority=spec.priority or None, scheduled=True,
                                 overlap=spec.overlap if overlap is None else overlap)

    def build_inserts(
        self, args_list: Iterable[Any], now: datetime, **options: Any
    ) -> list[JobInsert]:
        """One JobInsert per args dict, as :meth:`build_insert` makes each (same checks, same
        errors, in the same order), with the options checked once: the first job goes through
        :meth:`build_insert`, the others share its fields but for their args and keys."""
        inserts: list[JobInsert] = []
        first: JobInsert | None = None
        shared: dict[str, Any] = {}
        name = self.name
        unkeyed = options.get("overlap", Overlap.SKIP) == Overlap.ALLOW
        scheduled = bool(options.get("scheduled", False))
        concurrency_keyed = self.options.concurrency_key is not None
        new = object.__new__
        for args in args_list:
            if first is None:
                first = self.build_insert(dict(args), now, **options)
                inserts.append(first)
                shared = dict(vars(first))
                continue
            stored, text = encode_args(name, dict(args))
            self.check_args(stored)
            key = None if unkeyed else self.singleton_key(stored, scheduled)
            concurrency = self.concurrency_key(stored) if concurrency_keyed else None
            # Built from the first job's fields rather than through the frozen dataclass's
            # __init__ (one object.__setattr__ per field, twice the rest of the job's cost).
            insert = new(JobInsert)
            vars(insert).update(
                shared, args=stored, args_json=text,
                singleton_key=None if key is None else check_name("singleton key", key),
                concurrency_key=None if concurrency is None
                else check_name("concurrency key", concurrency))
            inserts.append(insert)
        return inserts

    def enqueue(self, **args: Any) -> JobHandle:
        """Enqueue a run. Keyword options (``run_at``, ``delay``, ``priority``, ``unique_key``,
        ``queue``, ``max_attempts``, ``connection``) are taken out; the rest are the job's args."""
        options = {key: args.pop(key) for key in list(args) if key in ENQUEUE_OPTIONS}
        return self.app.enqueue_job(self.name, args, **options)


GUARD_REFRESH = 1.0  # seconds a process trusts its read of which tasks stored schedules run


class ScheduleGuards:
    """Whether a schedule guards a task — runs it with the task's singleton key (overlap other
    than ``allow``), so that the task's manual jobs take that key too: the app's declared
    schedules, then the stored ones, read at most once per :data:`GUARD_REFRESH` seconds (the
    module docstring says when each counts)."""

    def __init__(self, declared: Mapping[str, ScheduleSpec],
                 stored: Callable[[], Iterable[ScheduleRow]]) -> None:
        self._declared = declared
        self._stored = stored
        self._tasks: frozenset[str] = frozenset()
        self._read_at: float | None = None
        self._generation = 0  # bumped by forget(): a read begun before it is not trusted

    def guards(self, task: str) -> bool:
        if any(spec.task == task and spec.overlap != Overlap.ALLOW
               for spec in self._declared.values()):
            return True
        return task in self._stored_tasks()

    def forget(self) -> None:
        """Read the stored schedules again at the next question (this process changed them)."""
        self._generation += 1
        self._read_at = None

    def _stored_tasks(self) -> frozenset[str]:
        read_at = self._read_at
        if read_at is not None and time.monotonic() - read_at < GUARD_REFRESH:
            return self._tasks
        generation, began = self._generation, time.monotonic()
        tasks = frozenset(row.task for row in self._stored()
                          if row.spec.get("overlap") != Overlap.ALLOW.value)
        self._tasks = tasks
        if generation == self._generation:
            self._read_at = began
        return tasks


def _check_importable(task_name: str, fn: Any) -> None:
    """ConfigError unless a child process can import ``fn`` by module and name (what
    ``isolation="process"`` needs: :mod:`oncely.worker.isolation`)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname:
        raise ConfigError(
            f"task {task_name!r}: isolation=\"process\" needs a handler defined at module "
            "level in an importable module (not inside a function, not in __main__), so that "
            "its child process can import it"
        )


class HandlerArgs:
    """The keyword args a handler takes after its context, read once from its signature:
    ``names`` (those it takes by name), ``required`` (those without a default), ``defaults``
    (the others' default values) and ``any`` (it takes ``**kwargs``). A handler whose signature
    cannot be read takes anything."""

    __slots__ = ("any", "defaults", "names", "required")

    def __init__(self, task_name: str, fn: Callable[..., Any]) -> None:
        self.names: frozenset[str] = frozenset()
        self.required: frozenset[str] = frozenset()
        self.defaults: dict[str, Any] = {}
        self.any = True
        try:
            parameters = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # a callable without a signature to read
            return
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                      inspect.Parameter.VAR_POSITIONAL)
        if not parameters or parameters[0].kind not in positional:
            raise ConfigError(f"task {task_name!r}: the handler must take the job's context as "
                              "its first argument, as in def handler(ctx, **args)")
        by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        rest = parameters[1:]
        for parameter in rest:
            if (parameter.kind == inspect.Parameter.POSITIONAL_ONLY
                    and parameter.default is parameter.empty):
                raise ConfigError(f"task {task_name!r}: the handler's argument "
                                  f"{parameter.name!r} is positional-only, but a job passes "
                                  "its args by name")
        self.names = frozenset(p.name for p in rest if p.kind in by_name)
        self.required = frozenset(p.name for p in rest
                                  if p.kind in by_name and p.default is p.empty)
        self.defaults = {p.name: p.default for p in rest if p.default is not p.empty}
        self.any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in rest)

    def mismatch(self, args: Mapping[str, Any]) -> str | None:
        """None when ``args`` fit; else what is wrong, in one line."""
        if not isinstance(args, Mapping):  # a row written past every check
            return f"args must be a JSON object, not {type(args).__name__}"
        keys = args.keys()
        if self.required.issubset(keys) and (self.any or keys <= self.names):
            return None
        problems = []
        unknown = [] if self.any else sorted(keys - self.names)
        if unknown:
            problems.append(f"the handler takes no argument {_names(unknown)}")
        missing = sorted(self.required - keys)
        if missing:
            problems.append(f"argument {_names(missing)} missing")
        takes = ", ".join(sorted(self.names)) or "no arguments"
        if self.any:
            takes += ", **kwargs"
        return f"{'; '.join(problems)} (the handler takes {takes})"


def _names(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _template_fields(task_name: str, template: str) -> None:
    import string

    try:
        list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"task {task_name!r}: singleton key {template!r} is invalid: {exc}"
        ) from None


def _check_key_template(task_name: str, handler: HandlerArgs, template: str) -> None:
    """Fail at definition time when the key template names an argument the handler does not
    take (the template falls back to the handler's defaults for args a job leaves out)."""
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"task {task_name!r}: concurrency_key {template!r} is invalid: {exc}"
        ) from None
    names = [field_name for _, field_name, _, _ in parsed if field_name is not None]
    for field_name in names:
        argument = re.split(r"[.\[]", field_name, maxsplit=1)[0]
        if not argument or argument.isdigit():
            raise ConfigError(f"task {task_name!r}: concurrency_key {template!r} must name "
                              "arguments, such as {org_id}, not {} or {0}")
        if argument not in handler.names and not handler.any:
            takes = ", ".join(sorted(handler.names)) or "no arguments"
            raise ConfigError(f"task {task_name!r}: concurrency_key {template!r} names argument "
                              f"{argument!r}, which the handler does not take ({takes})")


class JobHandle:
    """What enqueue returns: the job's id, whether it was new, and a way to look it up."""

    __slots__ = ("app", "created", "id", "job")

    def __init__(self, app: App, job: Job, created: bool) -> None:
        self.app = app
        self.id = job.id
        self.created = created
        self.job = job

    @property
    def state(self) -> JobState:
        return self.job.state

    def refresh(self) -> Job:
        found = self.app.get_job(self.id)
        if found is not None:
            self.job = found
        return self.job

    def __repr__(self) -> str:
        return f"<JobHandle id={self.id} task={self.job.task} state={self.job.state}>"
