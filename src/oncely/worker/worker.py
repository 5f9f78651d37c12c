"""The worker process: a claim loop, handler threads, the lease keeper and maintenance.

Lifecycle::

    start ─► register worker row, upsert declared queue controls and schedules, start keeper
      │        + maintenance
      ▼
    claim loop ── claims up to the free handler slots (and a paced prefetch buffer); an empty
      │            claim waits for a wake-up up to poll_interval; store errors back off
      ▼ stop (SIGTERM/SIGINT, or stop()); queued (prefetched) jobs are released at once
    draining ── no more claims; running jobs get shutdown_grace to finish; then they are asked to
      │          stop, and what is still running is released back as retryable (attempt refunded)
      ▼ second signal: skip the wait, release at once
    stopped ─► resign leadership, deregister, exit 0

The claim loop and its prefetch buffer (how many jobs a claim takes, and how long a claimed job
may wait for a handler thread) are :mod:`oncely.worker.claimer`'s.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from types import FrameType

from oncely.controls import register_controls
from oncely.errors import StoreError
from oncely.lifecycle import JobEvent
from oncely.runtime import HasRuntime, MaintenanceFactory, Runtime, Service
from oncely.store.params import WorkerInfo
from oncely.tasks import Task
from oncely.types import ErrorKind, Job, JobError
from oncely.worker import serverclock
from oncely.worker.claimer import Claimer
from oncely.worker.completer import Completer
from oncely.worker.execute import Outcome, failure, outcome_of, overran
from oncely.worker.isolation import run_in_process
from oncely.worker.keeper import LeaseKeeper
from oncely.worker.liveness import Liveness
from oncely.worker.running import Running

log = logging.getLogger("oncely.worker")


class Worker:
    """One worker process's claim loop, handler threads, lease keeper and maintenance.

    ``app.worker()`` builds one with the app's maintenance; ``Worker(app.runtime, …)`` (or
    ``Worker(app, …)``) builds one from what it needs, running maintenance only when given a
    ``maintenance`` factory."""

    # The keeper renews every running job's lease and stops a job whose lease it cannot renew
    # (self-fencing). A subclass may turn this off to show what a queue without heartbeats does
    # (leases run out under running jobs, which keep running); no setting exposes it.
    renews_leases = True

    def __init__(
        self,
        runtime: Runtime | HasRuntime,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        worker_id: str | None = None,
        maintenance: MaintenanceFactory | None = None,
    ) -> None:
        if not isinstance(runtime, Runtime):
            runtime = runtime.runtime
        # lease decisions on the store server's clock (see oncely.worker.serverclock)
        self.runtime = runtime = serverclock.aligned(runtime)
        self.concurrency = concurrency or runtime.settings.concurrency
        self.queues = tuple(queues) if queues else None
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_ttl = runtime.settings.lease_ttl
        self.maintenance = maintenance
        self._jobs: dict[int, Running] = {}  # jobs that hold a handler slot
        self._overrun: dict[int, Running] = {}  # code past its timeout: lease kept, slot freed
        self._recording = 0  # jobs of _jobs whose outcome waits for the completer's write
        # Claims may overlap the completer's writes unless the store takes writes in turn.
        self._claim_while_recording = not runtime.store.writes_take_turns
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[Running | None] = queue.SimpleQueue()
        self._capacity = threading.Event()
        self._stopping = threading.Event()
        self._forced = threading.Event()
        self._stopped = threading.Event()
        self._store_down_since: float | None = None
        self.clock_offset: float | None = None  # to the store server's clock, last measured
        self._keeper = LeaseKeeper(self)
        self._liveness = Liveness(self, self._keeper)
        self._completer = Completer(self)
        self._claimer = Claimer(self)
        self._threads: list[threading.Thread] = []
        self._supervisor: Service | None = None
        self._background: threading.Thread | None = None

    # public control ------------------------------------------------------------------------
    def run(self, install_signals: bool = True) -> int:
        """Run until stopped; returns the process exit code."""
        if install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self._start()
        try:
            self._claim_loop()
        finally:
            self._shutdown()
        return 0

    def start(self) -> Worker:
        """Run in a background thread (tests, embedding); stop with :meth:`stop`."""
        self._background = threading.Thread(
            target=self.run, kwargs={"install_signals": False}, name="oncely-worker", daemon=True
        )
        self._background.start()
        return self

    def stop(self, force: bool = False, timeout: float | None = None) -> None:
        self._stopping.set()
        self._capacity.set()
        if force:
            self._forced.set()
        if self._background is not None:
            self._background.join(timeout)

    def task_names(self) -> tuple[str, ...]:
        """The tasks this worker has: it claims only their jobs (a task registered later
        counts from the next claim)."""
        return tuple(self.runtime.tasks)

    def running_jobs(self) -> list[Running]:
        """Every job whose lease this worker holds (and renews)."""
        with self._lock:
            return [*self._jobs.values(), *self._overrun.values()]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping.is_set():
            log.warning("second signal: releasing running jobs now")
            self._forced.set()
        self._stopping.set()
        self._capacity.set()

    # start and stop ------------------------------------------------------------------------
    def _start(self) -> None:
        app = self.runtime
        store = app.store  # opens and migrates; errors surface to the caller
        self.clock_offset = serverclock.measure(store, app.clock)  # before any lease decision
        store.worker_register(
            WorkerInfo(self.worker_id, socket.gethostname(), os.getpid(), self.queues,
                       self.concurrency, app.clock.now(), self.task_names(),
                       0.0 if self.clock_offset is None else self.clock_offset)
        )
        if self.clock_offset is not None and abs(self.clock_offset) > self.lease_ttl / 10:
            log.warning("this machine's clock is %+.3f s off the store server's; leases are "
                        "judged on the server's clock", -self.clock_offset)
        self._liveness.acquire()  # before the first claim: the fleet can then prove us dead
        register_controls(app)  # before the first claim, so it claims under the app's limits
        for _ in range(self.concurrency):
            self._spawn_handler()
        self._keeper.start()
        self._liveness.start()
        self._completer.start()
        if self.maintenance is not None:
            supervisor = self.maintenance(self.runtime, self.worker_id)
            supervisor.start()
            self._supervisor = supervisor
        app.events.emit(
            "worker.started", worker_id=self.worker_id, concurrency=self.concurrency,
            queues=",".join(self.queues or ("*",)), store=store.dialect,
            clock_offset=round(self.clock_offset or 0.0, 3),
        )

    def _spawn_handler(self) -> None:
        thread = threading.Thread(target=self._handler_loop, name="oncely-handler", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _shutdown(self) -> None:
        app = self.runtime
        app.events.emit("worker.stopping", worker_id=self.worker_id, running=len(self._jobs))
        for running in self.running_jobs():  # queued (prefetched) jobs go back at once
            self.release_queued(running, "shutdown")
        deadline = time.monotonic() + app.settings.shutdown_grace
        while self._jobs and not self._forced.is_set() and time.monotonic() < deadline:
            self._capacity.wait(0.05)
            self._capacity.clear()
        for running in self.running_jobs():
            running.ctx.request_cancel("worker shutting down", ErrorKind.SHUTDOWN)
        settle = time.monotonic() + (0.0 if self._forced.is_set() else 1.0)
        while self._jobs and time.monotonic() < settle:
            time.sleep(0.01)
        with self._lock:
            # An overrunning handler ignores stop requests: its job keeps its lease until this
            # process exits (which ends the code), then the rescuer retries it.
            holding_slots = list(self._jobs.values())
        for running in holding_slots:
            self._release(running)
        # Handler threads that won the race to record their own outcome are finishing it now.
        recorded_by = time.monotonic() + 5.0
        while self._jobs and time.monotonic() < recorded_by:
            time.sleep(0.01)
        self._completer.close()
        for _ in self._threads:
            self._inbox.put(None)
        if self._supervisor is not None:
            self._supervisor.stop()
        self._keeper.stop_event.set()
        try:
            app.store.worker_deregister(self.worker_id)
        except StoreError as exc:
            log.warning("could not deregister worker: %s", exc)
        self._liveness.stop()
        app.events.emit("worker.stopped", worker_id=self.worker_id)
        self._stopped.set()

    def _release(self, running: Running) -> None:
        running.kill_process()  # a process-isolated handler is gone before its job is given back
        if not running.claim_finish():
            return
        now = self.runtime.clock.now()
        job = running.job
        note = "released by graceful shutdown of worker " + self.worker_id
        error = JobError(job.attempt, now, ErrorKind.SHUTDOWN, note)
        self._record(running, Outcome.of(JobEvent.RELEASE, error=error, retry_at=now))
        self.runtime.events.emit("job.released", job_id=job.id, task=job.task, reason="shutdown")

    # claiming (oncely.worker.claimer) -----------------------------------------------------------
    def _claim_loop(self) -> None:
        self._claimer.run()

    def _dispatch(self, job: Job, claim_sent: float) -> None:
        self._claimer.dispatch(job, claim_sent)

    def release_queued(self, running: Running, reason: str) -> bool:
        """Hand a job that no handler thread has begun back to the store (called by the keeper
        past ``start_by``, and on shutdown): retryable at its old ``run_at``, attempt refunded,
        no error recorded."""
        if not running.claim_release():
            return False
        job = running.job
        if reason == "prefetch":
            self._claimer.pause_prefetch()
        self._record(running, Outcome.of(JobEvent.RELEASE, retry_at=job.run_at))
        self.runtime.events.emit("job.released", job_id=job.id, task=job.task, reason=reason)
        return True

    # running -------------------------------------------------------------------------------
    def _handler_loop(self) -> None:
        while True:
            running = self._inbox.get()
            if running is None:
                return
            try:
                keep = self._execute(running)
            except BaseException:  # the handler slot must survive anything
                log.exception("running job %d failed unexpectedly", running.job.id)
                self._fail_unexpectedly(running)
                keep = not running.replaced
            if not keep:
                return  # this thread was replaced after its job was abandoned

    def _execute(self, running: Running) -> bool:
        """Run one job; False when the thread was replaced meanwhile and should exit."""
        app, job = self.runtime, running.job
        if not running.claim_begin():
            return True  # released, or the lease was lost, before a thread took it
        task = app.tasks.get(job.task)
        if task is None:
            outcome = failure(None, job, app.clock.now(), ErrorKind.ERROR,
                              f"task {job.task!r} is not registered in worker {self.worker_id}",
                              None)
        else:
            clock = app.clock
            running.started = started = clock.monotonic()
            running.isolated = isolated = task.options.isolation == "process"
            if job.timeout and not isolated:  # a child's counts from its own start
                running.timeout_at = started + job.timeout
            app.events.emit("job.started", job_id=job.id, task=job.task, attempt=job.attempt)
            if isolated:
                outcome = run_in_process(task, running, clock.now)
            else:
                outcome = outcome_of(task, running.ctx, clock.now)
            if running.overrunning:
                outcome = self._overran(task, running, outcome)
            self._claimer.ran(clock.monotonic() - started)
        if running.claim_finish():
            if outcome.abandoned:
                self._forget(running)
                app.events.emit("job.abandoned", job_id=job.id, task=job.task,
                                reason=running.ctx.cancel_reason)
            else:
                self._record(running, outcome)
        return not running.replaced

    def abandon_timed_out(self, running: Running) -> None:
        """Called by the keeper: the handler ignored its timeout. Its thread is written off and
        replaced, so the worker keeps its concurrency; the job keeps its lease (renewed) and its
        singleton key until the code really stops, and is recorded then (see running.py)."""
        with self._lock:
            if running.finished or running.overrunning or running.job.id not in self._jobs:
                return
            running.overrunning = running.replaced = True
            self._overrun[running.job.id] = self._jobs.pop(running.job.id)
        job = running.job
        self.runtime.events.emit("job.overrunning", job_id=job.id, task=job.task,
                                 timeout=job.timeout, worker_id=self.worker_id)
        self._capacity.set()
        self._spawn_handler()  # the stuck thread no longer counts against concurrency

    def _overran(self, task: Task, running: Running, outcome: Outcome) -> Outcome:
        job, app = running.job, self.runtime
        ran = app.clock.monotonic() - (running.started or 0.0)
        app.events.emit("job.overrun_ended", job_id=job.id, task=job.task,
                        duration=round(ran, 3), worker_id=self.worker_id)
        return overran(task, job, app.clock.now(), ran, outcome)

    def _fail_unexpectedly(self, running: Running) -> None:
        """Record a failure for a job whose execution broke outside its handler."""
        if not running.claim_finish():
            return
        job = running.job
        message = "the worker failed while running this job (see the worker's log)"
        self._record(running, failure(self.runtime.tasks.get(job.task), job,
                                      self.runtime.clock.now(), ErrorKind.ERROR, message, None))

    def give_up(self, running: Running, why: str) -> None:
        """Called by the keeper when the lease is lost: never record an outcome for this job."""
        if not running.claim_finish():
            return
        self._forget(running)
        self.runtime.events.emit("lease.lost", job_id=running.job.id, fence=running.job.fence,
                                 reason=why)
        if running.started is not None and not running.replaced:
            running.replaced = True
            self._spawn_handler()

    def _record(self, running: Running, outcome: Outcome) -> None:
        if not self._claim_while_recording:
            self._completer.submit(running, outcome)
            return
        with self._lock:
            if self._jobs.get(running.job.id) is running:  # not an overrun job's late outcome
                running.recording = True
                self._recording += 1
        self._completer.submit(running, outcome)
        self._capacity.set()  # the claim loop may claim again while the outcome is written

    def holding(self, room: int) -> int:
        """How much of the claim loop's ``room`` the jobs in hand take: each job until its
        outcome is recorded, except that up to another ``room`` of outcomes may wait for the
        completer's write (see :mod:`oncely.worker.claimer`)."""
        with self._lock:
            return len(self._jobs) - min(self._recording, room)

    def recorded_many(self, done: Sequence[tuple[Running, Outcome, bool | None]]) -> None:
        """Called by the completer for a batch it wrote: each outcome written (True), refused by
        the fence (False) or given up because the store stayed unreachable (None). The slots
        are freed under one hold of the lock and one wake-up of the claim loop; events follow."""
        self._forget_all([running for running, _, _ in done])
        events, mono = self.runtime.events, self.runtime.clock.monotonic()
        for running, outcome, applied in done:
            job = running.job
            try:
                if applied is None:
                    events.emit("job.unrecorded", job_id=job.id, task=job.task,
                                outcome=str(outcome.state))
                elif not applied:
                    events.emit("fence.rejected", job_id=job.id, fence=job.fence,
                                task=job.task, transition=str(outcome.state))
                elif events.wants(f"job.{outcome.state}"):
                    fields = {"job_id": job.id, "task": job.task, "attempt": job.attempt,
                              "queue": job.queue}
                    if job.schedule is not None and job.slot is not None:
                        fields["schedule"], fields["slot"] = job.schedule, job.slot.isoformat()
                    if running.started is not None:
                        fields["duration"] = round(mono - running.started, 6)
                    if outcome.error is not None:
                        fields["error"] = outcome.error.message
                    events.emit(f"job.{outcome.state}", **fields)
            except Exception:  # one job's event must not cost the others theirs
                log.exception("after recording job %d", job.id)

    def _forget(self, running: Running) -> None:
        self._forget_all((running,))

    def _forget_all(self, done: Sequence[Running]) -> None:
        """These jobs no longer hold a handler slot (or their lease): the claim loop may fill
        their slots."""
        with self._lock:
            jobs, overrun = self._jobs, self._overrun
            for running in done:
                job_id = running.job.id
                jobs.pop(job_id, None)
                overrun.pop(job_id, None)
                if running.recording:
                    running.recording = False
                    self._recording -= 1
        self._capacity.set()

    # store health --------------------------------------------------------------------------
    def note_store_error(self, exc: StoreError) -> None:
        if self._store_down_since is None:
            self._store_down_since = time.monotonic()
            self.runtime.events.emit("store.unavailable", worker_id=self.worker_id, error=str(exc))

    def note_store_ok(self) -> None:
        if self._store_down_since is not None:
            down = time.monotonic() - self._store_down_since
            self._store_down_since = None
            self.runtime.events.emit("store.recovered", worker_id=self.worker_id,
                                     down_seconds=round(down, 3))
