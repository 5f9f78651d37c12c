"""The worker's claim loop, and the prefetch pacing that sizes its claims.

The loop claims up to the free handler slots (plus the prefetch buffer); an empty claim waits for
a wake-up (LISTEN/NOTIFY or a data-version poll) up to ``poll_interval``, or only until a rate
window that held jobs back has room again; a full claim re-polls as soon as a slot frees; store
errors back off (logged once). It stops claiming when the worker stops (see the worker's state
machine in :mod:`oncely.worker.worker`).

Prefetch and its bound. A claim takes up to ``concurrency`` plus a prefetch buffer of jobs minus
those in hand, so the handlers work through a buffer while the next claim is in flight. The
buffer is sized from the handlers' recent run times, so that its jobs are expected to begin
within a quarter of ``prefetch_wait`` (at most ``prefetch``; none when jobs are slow). A claimed
job is *queued* until a handler thread begins it; its lease is held and renewed like a running
job's. A queued job not begun ``prefetch_wait`` seconds after its claim was sent is released back
to the store (``job.released``, reason ``prefetch``: retryable at its old ``run_at``, the attempt
refunded, so it keeps its place in line) for any worker to claim, and this worker stops
prefetching for another ``prefetch_wait``. So no job waits in a worker's buffer for longer than
``prefetch_wait`` plus one keeper tick (50 ms) before another worker may claim it.

Claims and the completer's writes overlap. A job holds its place in the room from its claim
until its outcome is recorded, except while that outcome waits for the completer's batch write:
up to another ``room`` of such jobs do not count, so the next claim goes out while the last
batch of outcomes is being written instead of after it (on PostgreSQL each takes a commit; done
in turn, half of a no-op drain was one waiting for the other). The worker thus holds at most
twice its room of leases, and never more than its room of jobs queued or running. A store whose
writes take turns anyway (SQLite: ``Store.writes_take_turns``) gains nothing from the overlap,
and there every job counts until its outcome is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from oncely.errors import StoreError
from oncely.store.controls import earliest
from oncely.store.params import ClaimResult, JobClaimParams
from oncely.types import Job
from oncely.worker.context import JobContext
from oncely.worker.keeper import safety_margin
from oncely.worker.running import Running

if TYPE_CHECKING:
    from oncely.worker.worker import Worker

MAX_STORE_BACKOFF = 10.0
CLAIM_GATHER = 0.003  # seconds a busy worker waits for more free handler slots before claiming
MIN_LIMITED_WAIT = 0.002  # a rate window that opens "now" is re-tried after this, not at once


class Claimer:
    """One worker's claims: when to claim, how many, and handing each claimed job over."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.prefetch = worker.runtime.settings.prefetch
        self.prefetch_wait = worker.runtime.settings.prefetch_wait
        self.paused_until = 0.0  # monotonic: no prefetch before this
        self.mean_run: float | None = None  # seconds, moving average of handler run times

    def run(self) -> None:
        """Claim until the worker stops."""
        worker = self.worker
        app, settings = worker.runtime, worker.runtime.settings
        backoff = 0.0
        backlog = False  # the last claim was full: more jobs are probably waiting
        while not worker._stopping.is_set():
            room = self.room()
            free = room - worker.holding(room)
            if free <= 0 or (backlog and free < max(1, room // 2)):
                # Under load, let a few handler slots free up and claim them together: one
                # claim transaction per job would make the claim itself the bottleneck.
                worker._capacity.wait(settings.poll_interval if free <= 0 else CLAIM_GATHER)
                worker._capacity.clear()
                room = self.room()
                free = room - worker.holding(room)
                if free <= 0:
                    continue
            if not worker._liveness.held.is_set():  # fenced itself: no claims until it holds
                worker._liveness.held.wait(settings.poll_interval)
                continue
            started = app.clock.monotonic()
            params = JobClaimParams(worker.worker_id, app.clock.now(), free, worker.lease_ttl,
                                    worker.queues, worker.task_names())
            try:
                result = app.store.job_claim(params)
            except StoreError as exc:
                worker.note_store_error(exc)
                backoff = min(MAX_STORE_BACKOFF, max(0.1, backoff * 2))
                worker._stopping.wait(backoff)
                continue
            backoff = 0.0
            worker.note_store_ok()
            for job in result.skipped_overlap:
                app.events.emit("slot.skipped_overlap", job_id=job.id, schedule=job.schedule,
                                slot=job.slot)
            for ended in result.policy_ended:  # backlog judged by its schedule's policies
                app.events.emit(f"slot.{ended.outcome}", job_id=ended.job_id,
                                schedule=ended.schedule, slot=ended.slot.isoformat(),
                                note=ended.note)
            if result.jobs:
                self.dispatch_all(result.jobs, started)
            backlog = len(result.jobs) == free
            if not result.jobs:
                app.store.wait_for_work(self.idle_wait(result))

    def room(self) -> int:
        """How many jobs the worker may hold (queued or running) right now: its threads, plus
        as many queued jobs as its threads are expected to begin within a quarter of
        ``prefetch_wait`` at the handlers' recent pace (none for slow jobs, ``prefetch`` for
        short ones; as many as the threads before any job has ended)."""
        concurrency = self.worker.concurrency
        if not self.prefetch or self.worker.runtime.clock.monotonic() < self.paused_until:
            return concurrency
        pace = self.mean_run
        if pace is None:
            return concurrency + min(self.prefetch, concurrency)
        if pace <= 0.0:
            return concurrency + self.prefetch
        fits = int(concurrency * self.prefetch_wait / (4.0 * pace))
        return concurrency + min(self.prefetch, fits)

    def ran(self, took: float) -> None:
        """A handler ran for ``took`` seconds: the pace the buffer is sized by."""
        mean = self.mean_run  # updated without a lock: an estimate, any thread's will do
        self.mean_run = took if mean is None else mean + (took - mean) * 0.1

    def pause_prefetch(self) -> None:
        """A queued job waited too long: claim no more than the threads for ``prefetch_wait``."""
        self.paused_until = self.worker.runtime.clock.monotonic() + self.prefetch_wait

    def idle_wait(self, result: ClaimResult) -> float:
        """How long an empty claim waits for a wake-up: the poll interval, or less when a rate
        window that held jobs back opens sooner (wake-ups do not announce that)."""
        runtime = self.worker.runtime
        poll = runtime.settings.poll_interval
        opens = earliest(result.waits)
        if opens is None:
            return poll
        return min(poll, max(MIN_LIMITED_WAIT, (opens - runtime.clock.now()).total_seconds()))

    def dispatch(self, job: Job, claim_sent: float) -> None:
        """Hand a claimed job to the handler threads; its lease is kept from now on."""
        self.dispatch_all((job,), claim_sent)

    def dispatch_all(self, jobs: Sequence[Job], claim_sent: float) -> None:
        """Hand one claim's jobs to the handler threads (in claim order); their leases are kept
        from now on. All are entered under one hold of the worker's lock."""
        worker = self.worker
        runtime, worker_id, keeper = worker.runtime, worker.worker_id, worker._keeper
        deadline = claim_sent + worker.lease_ttl - safety_margin(worker.lease_ttl)
        start_by = claim_sent + self.prefetch_wait
        batch = []
        for job in jobs:
            ctx = JobContext(runtime, job, worker_id)
            running = Running(job, ctx, deadline, start_by)
            ctx.heartbeat_hook = partial(keeper.renew_one, running)
            batch.append(running)
        with worker._lock:
            held = worker._jobs
            for running in batch:
                held[running.job.id] = running
        events = runtime.events
        announce = events.wants("job.claimed")
        put = worker._inbox.put
        for running in batch:
            if announce:
                job = running.job
                started_at = job.started_at
                wait = (0.0 if started_at is None
                        else max(0.0, (started_at - job.run_at).total_seconds()))
                events.emit("job.claimed", job_id=job.id, task=job.task, fence=job.fence,
                            attempt=job.attempt, worker_id=worker_id, queue=job.queue,
                            wait=round(wait, 6))
            put(running)
