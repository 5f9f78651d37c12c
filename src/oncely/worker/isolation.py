"""Process isolation: a handler that runs in a child process the worker can kill.

A thread cannot be stopped from outside. A task declared ``@app.task(isolation="process")`` runs
each attempt in a child process the worker can kill (the way a work-horse process or a hard time
limit stops code that ignores every request), while the handler thread that asked for it waits,
serves the child's heartbeats and watches the job::

    start ─► running ┬─ the child reports its outcome and exits ─────────► outcome as reported
                     ├─ stop requested (timeout, cancel, shutdown) ─► SIGTERM: ``Cancel`` is
                     │    raised in the handler (its ``finally`` blocks run) ─► exits ─► outcome
                     │    of the stop (timeout: retried per policy; cancel: cancelled; shutdown:
                     │    released) ─┐
                     │               └─ still alive after the grace ─► SIGKILL ─► reaped ─► same
                     ├─ lease lost (refused renewal, or self-fenced at the local deadline)
                     │    ─► SIGKILL at once ─► reaped ─► nothing recorded
                     └─ the child dies on its own (signal, ``os._exit``) ─► failed attempt:
                          "the handler process was killed by SIGSEGV …", retried per policy

The task's timeout counts from the moment the child starts the handler (a child that has not
started it within ``START_LIMIT`` counts as timed out). The job's lease is renewed by the
worker's keeper as for any job, and the job is only recorded (which frees its singleton key) once
the child has been reaped: the next attempt never starts beside the previous one. If the worker
process itself dies, its fork server ends and the child gets SIGKILL from the kernel
(``PR_SET_PDEATHSIG`` on Linux) before the rescuer can hand the job to anyone else.

Children are not forked from the worker itself: a fork copies the locks other threads hold at
that instant (SQLite's and libpq's among them), and a child that needs one hangs for ever — with
a busy SQLite store, about one fork in a hundred. They come from a fork server
(``multiprocessing``'s ``forkserver``): a single-threaded process started on first use, which
imports oncely and the modules of the app's process-isolated tasks once, and forks a child per
attempt. So such a handler must be defined at module level in an importable module (not in a
function, not in ``__main__``); the child finds it by module and name. A program that embeds a
worker (``Worker(app).run()``) must guard its main module with ``if __name__ == "__main__":``,
as ``multiprocessing`` requires: a child prepares itself by importing it.

What the handler's context offers in the child: ``args``, ``job``, ``job_id``, ``fence``,
``attempt``, ``slot``, ``schedule``, ``last_checkpoint``, ``now()``, ``log``, ``cancelled`` /
``cancel_event`` (set by SIGTERM), ``heartbeat()`` (forwarded to the worker, which renews the
lease), and ``app``, ``check_fence()``, ``fenced()``, ``checkpoint()``, which work on an app of
the child's own with the worker's URL, settings and tasks (its own database connections, opened
on first use). Not available: the worker's clock (the child uses the system clock, or
``ONCELY_CLOCK``), the worker's event subscribers (events the child emits reach the store's fleet
records, not the worker's logs or metrics), and starting ``multiprocessing`` children (the child
is a daemon process; use ``subprocess``). The handler's result and errors travel back by
pickling, after the same storability check as in a thread. Cost: a fork server round trip per
attempt (``bench/isolation.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from oncely.errors import Cancel, ConfigError, FenceRejected
from oncely.lifecycle import JobEvent
from oncely.types import ErrorKind, Job, JobError, JobState
from oncely.worker.context import JobContext
from oncely.worker.execute import Outcome, describe, failure, outcome_of, stopped

if TYPE_CHECKING:
    from oncely.app import App
    from oncely.config import Settings
    from oncely.runtime import Runtime
    from oncely.tasks import Task
    from oncely.worker.running import Running

POLL = 0.05  # seconds between checks of stop requests while the child runs
KILL_GRACE = 2.0  # seconds a child gets to stop after SIGTERM before SIGKILL
START_LIMIT = 60.0  # seconds a child may take to start its handler
_PR_SET_PDEATHSIG = 1


# the worker's side ------------------------------------------------------------------------------


def run_in_process(task: Task, running: Running, now_fn: Any) -> Outcome:
    """Run the handler of ``running`` in a child process and return its outcome; the child has
    been reaped when this returns."""
    ctx = running.ctx
    runtime = ctx.runtime
    context = _fork_server(runtime.tasks)
    conn, child_conn = context.Pipe()
    process = context.Process(
        target=_child_main, name=f"oncely-job-{ctx.job.id}", daemon=True,
        args=(child_conn, task_reference(task), ctx.job, ctx.worker_id, runtime.settings),
    )
    try:
        process.start()
    except Exception as exc:  # no child: the attempt failed before the handler ran
        conn.close()
        child_conn.close()
        return failure(task, ctx.job, now_fn(), ErrorKind.ERROR,
                       f"the handler process could not start: {describe(exc)}", None)
    running.process = process
    try:
        child_conn.close()
        reported = _watch(process, conn, running)
    finally:
        running.kill_process()  # never leave a child behind, whatever happened here
        conn.close()
    return _outcome(task, running, reported, process.exitcode, now_fn)


def task_reference(task: Task) -> tuple[str, str, str]:
    """(module, qualified name, task name): how a child process finds the task."""
    return task.fn.__module__, task.fn.__qualname__, task.name


_SERVER_LOCK = threading.Lock()


def _fork_server(tasks: Mapping[str, Task]) -> Any:
    """The forkserver context, its server told (before it first starts) to import oncely and
    the modules of every process-isolated task once, not once per job."""
    with _SERVER_LOCK:
        context = multiprocessing.get_context("forkserver")
        modules = {"oncely.worker.isolation"} | {
            t.fn.__module__ for t in tasks.values() if t.options.isolation == "process"}
        context.set_forkserver_preload(sorted(modules))
        return context


def _watch(process: Any, conn: Connection, running: Running) -> Outcome | None:
    """Serve the child's messages and stop it when asked, until it is gone; returns the
    outcome it reported, if any. The task's timeout counts from the moment the child reports
    that its handler starts (a fork server's first start may take a while on a busy machine);
    a child that does not get that far within START_LIMIT is stopped."""
    ctx, reported, open_pipe = running.ctx, None, True
    job, clock = running.job, ctx.runtime.clock
    grace = min(KILL_GRACE, max(job.timeout or KILL_GRACE, 0.1))
    start_by: float | None = clock.monotonic() + START_LIMIT
    terminated_at: float | None = None
    while True:
        ready = wait([conn, process.sentinel] if open_pipe else [process.sentinel], POLL)
        if conn in ready:  # drain what the child sent before looking at its sentinel
            try:
                message = conn.recv()
            except (EOFError, OSError):
                open_pipe = False
            else:
                if message[0] == "outcome":
                    reported = message[1]
                elif message[0] == "started":
                    start_by = None
                    if job.timeout:
                        running.timeout_at = clock.monotonic() + job.timeout
                else:  # a heartbeat: renew this job's lease now
                    hook = ctx.heartbeat_hook
                    conn.send(bool(hook()) if hook is not None else True)
        elif process.sentinel in ready:
            process.join()
            return reported
        if start_by is not None and clock.monotonic() >= start_by:
            ctx.request_cancel(f"the handler process did not start within {START_LIMIT:g}s",
                               ErrorKind.TIMEOUT)
        if ctx.cancelled:
            now = time.monotonic()
            if ctx.lease_lost.is_set():
                process.kill()  # someone else may take the job over: stop it now
            elif terminated_at is None:
                terminated_at = now
                process.terminate()
            elif now >= terminated_at + grace:
                process.kill()


def _outcome(task: Task, running: Running, reported: Outcome | None, exitcode: int | None,
             now_fn: Any) -> Outcome:
    ctx = running.ctx
    if reported is not None and (not ctx.cancelled or reported.abandoned
                                 or reported.state == JobState.SUCCEEDED):
        return reported
    if ctx.cancelled:  # the worker stopped it: say how, and what the handler said if anything
        error = reported.error if reported is not None else None
        how = _how(exitcode) if reported is None else "ended after it was asked to stop"
        said = f" ({error.message})" if error is not None else ""
        tb = error.traceback if error is not None else None
        return stopped(task, ctx, now_fn(), f"the handler process {how}{said}", tb)
    return failure(task, ctx.job, now_fn(), ErrorKind.ERROR,
                   f"the handler process {_how(exitcode)} before it reported an outcome", None)


def _how(exitcode: int | None) -> str:
    if exitcode is None:
        return "could not be reaped"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


# the child's side -------------------------------------------------------------------------------


class ProcessContext(JobContext):
    """The context of a handler in a child process (see the module doc for what it offers)."""

    def __init__(self, runtime: Runtime, job: Job, worker_id: str, conn: Connection) -> None:
        super().__init__(runtime, job, worker_id)
        self._conn = conn
        self._cancel_event = threading.Event()
        self._lease_lost = threading.Event()

    def heartbeat(self) -> None:
        """Ask the worker to renew this job's lease now; FenceRejected if it was lost."""
        self._conn.send(("heartbeat",))
        if not self._conn.recv():
            raise FenceRejected(self.job.id, self.job.fence)


def _child_main(conn: Connection, reference: tuple[str, str, str], job: Job, worker_id: str,
                settings: Settings) -> None:
    """The child: run the handler once, report the outcome, exit at once (nothing registered
    at exit may hold it up)."""
    gc.freeze()  # what the fork server loaded stays shared: no collection touches its pages
    code = 0
    try:
        _die_with_parent()
        task = _find_task(reference)
        app = own_app(task, settings)
        runtime = app.runtime
        ctx = ProcessContext(runtime, job, worker_id, conn)

        def on_sigterm(signum: int, frame: Any) -> None:
            ctx.request_cancel("the worker asked the handler to stop")
            raise Cancel("the worker asked the handler to stop (SIGTERM)")

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when its jobs stop
        signal.signal(signal.SIGTERM, on_sigterm)
        conn.send(("started",))
        outcome = outcome_of(task, ctx, runtime.clock.now)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _report(conn, outcome, job, runtime.clock.now())
        app.close()
    except BaseException as exc:  # report what went wrong rather than die silently
        code = 1
        with contextlib.suppress(BaseException):
            error = JobError(job.attempt, datetime.now(UTC), ErrorKind.ERROR,
                             f"the handler process could not run the task: {describe(exc)}")
            conn.send(("outcome", Outcome.of(JobEvent.FAIL, error=error)))
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):  # a closed stream must not keep it alive
                stream.flush()
        os._exit(code)


def _find_task(reference: tuple[str, str, str]) -> Task:
    from oncely.tasks import Task

    module_name, qualname, name = reference
    module = importlib.import_module(module_name)
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if isinstance(found, Task) and found.name == name:
        return found  # the usual case: the module keeps what @app.task returned
    for value in vars(module).values():  # registered as app.task(fn): ask the module's apps
        tasks = getattr(value, "tasks", None)
        task = tasks.get(name) if isinstance(tasks, dict) else None
        if isinstance(task, Task) and task.fn.__qualname__ == qualname:
            return task
    raise ConfigError(f"task {name!r} is not found in module {module_name} (its handler must "
                      "be a module-level function registered on a module-level app)")


def own_app(task: Task, settings: Settings) -> App:
    """An app of the child's own (its own connections, opened on first use): the worker's
    settings, and the declarations of the app the task's module registered it on."""
    source = task.app
    app = type(source)(settings.database_url, settings=settings, auto_migrate=False)
    app.tasks, app.schedules, app.queues = source.tasks, source.schedules, source.queues
    return app


def _report(conn: Connection, outcome: Outcome, job: Job, now: datetime) -> None:
    try:
        conn.send(("outcome", outcome))
    except Exception as exc:  # something in it does not pickle
        error = JobError(job.attempt, now, ErrorKind.ERROR,
                         f"the handler's outcome could not be sent to the worker: {exc!r}")
        conn.send(("outcome", Outcome.of(JobEvent.FAIL, error=error)))


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this child when the fork server ends — which it does as soon as
    the worker that started it is gone — so a killed worker never leaves an attempt running
    beside the rescuer's retry (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
