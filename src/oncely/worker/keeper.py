"""The lease keeper: threads that keep a worker's leases alive, and stop what must stop.

They run beside the handler threads, so a handler that burns CPU or blocks cannot starve them (the
interpreter switches threads at least every few milliseconds). A renewer thread renews, every
``lease_ttl / 3``, the leases of all the worker's running jobs in one store call. The keeper thread
itself only enforces, every tick: a renewal that hangs (on a lock another session holds, or in a
network partition) cannot hold back a deadline. For each job it keeps a local
**deadline** on the monotonic clock: the instant the claim or the last successful renewal was sent,
plus the TTL, minus a safety margin. Then:

* a renewal the store refuses (fence moved on, job rescued or cancelled-and-finished) → the lease
  is lost: the job is asked to stop and is abandoned; its outcome is never recorded;
* renewals that fail because the store is unreachable until the deadline passes → self-fencing:
  the same, before anyone else may take the job over;
* ``cancel_requested`` in a renewal answer → the handler is asked to stop (cooperative);
* a job past its task's timeout is asked to stop; a thread that still runs after a short grace
  is written off and replaced (the job is *overrunning*), but its lease is still renewed here —
  the job and its singleton key stay taken until the code really stops, and only then is the
  timeout recorded (retried per its policy). A process-isolated handler is killed instead
  (:mod:`oncely.worker.isolation`). The whole state machine is in :mod:`oncely.worker.running`;
* a claimed job that no handler thread has begun by its ``start_by`` (the claim plus
  ``prefetch_wait``) is released back to the store for another worker (see
  :mod:`oncely.worker.claimer`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from oncely.errors import StoreError
from oncely.store.base import LeaseRenewal
from oncely.types import ErrorKind
from oncely.worker import serverclock

if TYPE_CHECKING:
    from oncely.worker.running import Running
    from oncely.worker.worker import Worker

log = logging.getLogger("oncely.worker")

TICK = 0.05  # seconds between checks of timeouts and deadlines
TIMEOUT_GRACE = 2.0  # seconds a timed-out handler gets to stop before it is abandoned


def safety_margin(ttl: float) -> float:
    return min(ttl / 6.0, 5.0)


class LeaseKeeper(threading.Thread):
    def __init__(self, worker: Worker) -> None:
        super().__init__(name=f"oncely-keeper-{worker.worker_id}", daemon=True)
        self.worker = worker
        self.stop_event = threading.Event()
        self.renew_now = threading.Event()
        self._renew_lock = threading.Lock()
        self._next_renew = 0.0

    @property
    def interval(self) -> float:
        return self.worker.lease_ttl / 3.0

    def run(self) -> None:
        threading.Thread(target=self._renew_loop, name=f"{self.name}-renewer",
                         daemon=True).start()
        clock = self.worker.runtime.clock
        while not self.stop_event.wait(TICK):
            try:
                self.enforce(clock.monotonic())
            except Exception:  # the keeper must survive anything a tick throws
                log.exception("lease keeper tick failed")

    def _renew_loop(self) -> None:
        clock = self.worker.runtime.clock
        while not self.stop_event.wait(TICK):
            try:
                mono = clock.monotonic()
                if mono >= self._next_renew or self.renew_now.is_set():
                    self.renew_now.clear()
                    self.renew(mono, leases=self.worker.renews_leases)
            except Exception:  # the renewer must survive anything a tick throws
                log.exception("lease renewal failed")

    def renew_one(self, running: Running) -> bool:
        """Renew one job's lease now (``ctx.heartbeat()``); whether it was renewed."""
        return self.renew(self.worker.runtime.clock.monotonic(), running)

    def renew(self, mono: float, only: Running | None = None, leases: bool = True) -> bool:
        """Renew all leases (or one) and the worker's own row; returns whether ``only`` (if
        given) was renewed. ``leases=False`` touches only the worker row."""
        worker = self.worker
        with self._renew_lock:
            targets = [only] if only is not None else worker.running_jobs()
            targets = [r for r in targets if not r.finished and leases]
            if only is None:
                self._next_renew = mono + self.interval
            try:
                if only is None:
                    offset = serverclock.measure(worker.runtime.store, worker.runtime.clock)
                    worker.clock_offset = offset if offset is not None else worker.clock_offset
                    worker.runtime.store.worker_heartbeat(
                        worker.worker_id, worker.runtime.clock.now(), offset)
                sent = worker.runtime.clock.monotonic()
                now = worker.runtime.clock.now()
                if not targets:
                    return False
                answers = worker.runtime.store.lease_renew(
                    worker.worker_id,
                    now,
                    worker.lease_ttl,
                    [LeaseRenewal(r.job.id, r.job.fence) for r in targets],
                )
            except StoreError as exc:
                worker.note_store_error(exc)
                return False
            worker.note_store_ok()
            renewed_only = False
            for running in targets:
                answer = answers.get(running.job.id)
                if answer is None or not answer.renewed:
                    self.lose(running, "the store refused the lease renewal (fence moved on)")
                    continue
                running.lease_deadline = sent + worker.lease_ttl - safety_margin(worker.lease_ttl)
                renewed_only = True
                if answer.cancel_requested:
                    running.ctx.request_cancel("cancellation requested", ErrorKind.CANCELLED)
            return renewed_only

    def enforce(self, mono: float) -> None:
        for running in self.worker.running_jobs():
            if running.finished:
                continue
            if not running.begun and mono >= running.start_by:
                self.worker.release_queued(running, "prefetch")
                continue
            if mono >= running.lease_deadline and self.worker.renews_leases:
                self.worker.runtime.events.emit(
                    "lease.self_fenced", job_id=running.job.id, fence=running.job.fence
                )
                self.lose(running, "lease could not be renewed before its deadline")
            elif (running.timeout_at is not None and mono >= running.timeout_at
                  and not running.overrunning):
                if running.abandon_at is None:
                    timeout = running.job.timeout or 0.0
                    running.ctx.request_cancel(f"timed out after {timeout:g}s", ErrorKind.TIMEOUT)
                    running.abandon_at = mono + min(TIMEOUT_GRACE, max(timeout, 0.1))
                elif mono >= running.abandon_at and not running.isolated:
                    # a process-isolated handler is killed by its own thread instead
                    self.worker.abandon_timed_out(running)

    def lose(self, running: Running, why: str) -> None:
        running.ctx.request_cancel(why, ErrorKind.LEASE_LOST)
        self.worker.give_up(running, why)
