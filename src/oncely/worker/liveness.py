"""Worker liveness: how a dead worker's jobs are taken over in about a second, and why a worker
that only looks dead cannot do harm.

Each worker holds a **liveness lock** from the moment it starts until it stops, through its store
(:meth:`Store.liveness_hold <oncely.store.base.Store.liveness_hold>`):

* SQLite (one machine): an exclusive ``flock`` on a file of its own beside the database. The
  kernel releases it when the process ends, however it ends.
* PostgreSQL: a session-level advisory lock on a connection of its own. The server releases it
  when that session ends: the process died and its socket closed, the connection was terminated,
  or TCP keepalives gave up on a vanished peer.

The lock's token is recorded in the worker's row, so the rest of the fleet knows there is
something to test. States of a worker, as the fleet sees them::

    starting ──lock taken, token recorded──► live ──process or session ends──► gone
                                              │                                 │ any worker's
                                              │ frozen, cut off (lock held)     │ rescuer, within
                                              ▼                                 ▼ about a second
                                           silent ──leases expire──► rescued by any worker
                                                    (the lease TTL)

**Who decides.** Not the leader: every worker's rescuer (:mod:`oncely.maintenance.rescuer`) runs
about every half second over the running jobs of *other* owners, asks the store which of those
owners' locks are free, and rescues their jobs at once. Owners that hold their lock but do not
renew (frozen, partitioned) are rescued only when their leases expire: the lease TTL stays the
bound for a worker that is alive but silent. A worker whose row carries no token (an in-memory
database; a lock that could not be taken) can only time out.

**Losing one's own lock.** A worker watches its lock. When it is lost while the worker lives (on
PostgreSQL: its liveness connection dropped or was terminated), it stops claiming
(``worker.liveness_lost``) and takes a new lock at once (retrying every second while the store is
unreachable). If its session ended while the server ran on, the rest of the fleet may have proven
it dead and taken its jobs over, so it **fences itself**: every running job is asked to stop and
abandoned (its outcome is never recorded), and those nobody rescued yet it rescues itself, as a
proven-gone owner's (``worker_gone``), so they do not wait for their leases. If the server
restarted instead (it ended every session at once, which proves nobody dead: the lock's token
names the server's incarnation, and rescuers ignore tokens of an earlier one), its jobs carry on
under their leases. Either way it claims again once it holds the new lock
(``worker.liveness_restored``, with ``fenced`` and ``server_restarted``).

**A false death** (the lock was lost but the process lives, e.g. a dropped connection) is safe for
the same reason a zombie is: a rescue moves the job's fence on, and from then on the old owner's
renewals, completions and ``ctx.fenced()`` writes are refused by the store. Between the loss and
the self-fence (the watcher wakes at once; taking a new lock is one connection, milliseconds
while the server is up) the old handler may still run beside the new attempt; only its fenced
writes are guaranteed not to land.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from oncely.errors import StoreError
from oncely.store.rescue import JobRescue, LivenessHold, NoHold

if TYPE_CHECKING:
    from oncely.worker.keeper import LeaseKeeper
    from oncely.worker.worker import Worker

log = logging.getLogger("oncely.worker")

WATCH_STEP = 0.25  # seconds between looks at the lock (the PostgreSQL hold wakes at once anyway)
RETAKE_INTERVAL = 1.0  # seconds between attempts to take a lost lock again


class Liveness(threading.Thread):
    """Holds the worker's liveness lock and fences the worker when it is lost."""

    def __init__(self, worker: Worker, keeper: LeaseKeeper) -> None:
        super().__init__(name=f"oncely-liveness-{worker.worker_id}", daemon=True)
        self.worker = worker
        self.keeper = keeper
        self.held = threading.Event()  # claims wait while it is clear
        self._stop = threading.Event()
        self._hold: LivenessHold = NoHold()

    def acquire(self) -> None:
        """Take the lock (before the first claim); without one the worker runs on timeouts."""
        self._hold = self._take()
        self.held.set()

    def _take(self) -> LivenessHold:
        worker = self.worker
        try:
            return worker.runtime.store.liveness_hold(worker.worker_id)
        except StoreError as exc:
            log.warning("no liveness lock (%s): a death of this worker is noticed only when its "
                        "leases expire", exc)
            return NoHold()

    def run(self) -> None:
        while not self._stop.is_set():
            if self._hold.lost(WATCH_STEP) and not self._stop.is_set():
                self._recover()

    def _recover(self) -> None:
        """The lock is lost: stop claiming, take a new one, and fence the running jobs unless
        the loss cannot have let anyone prove this worker dead (a restart of the server)."""
        worker, before = self.worker, self._hold.incarnation
        self.held.clear()
        worker.runtime.events.emit("worker.liveness_lost", worker_id=worker.worker_id,
                               running=len(worker.running_jobs()))
        hold = self._retake()
        if hold is None:
            return  # stopping
        self._hold = hold
        restarted = before is not None and hold.incarnation != before
        fenced = 0 if restarted else self._fence()
        self.held.set()
        worker.runtime.events.emit("worker.liveness_restored", worker_id=worker.worker_id,
                               fenced=fenced, server_restarted=restarted)

    def _retake(self) -> LivenessHold | None:
        while not self._stop.is_set():
            try:
                return self.worker.runtime.store.liveness_hold(self.worker.worker_id)
            except StoreError:
                self._stop.wait(RETAKE_INTERVAL)
        return None

    def _fence(self) -> int:
        """Stop and abandon every running job, then hand back those nobody rescued yet: the
        fleet may already have taken some over, and would take the rest only when their leases
        expire (this worker holds a lock again)."""
        worker = self.worker
        running = worker.running_jobs()
        for item in running:
            self.keeper.lose(item, "the worker's liveness lock was lost: the fleet may take "
                                   "its jobs over")
        reason = f"worker {worker.worker_id} lost its liveness lock and stopped its jobs"
        for item in running:
            job = item.job
            params = JobRescue(job.id, job.fence, worker.runtime.clock.now(), reason,
                               worker.runtime.settings.max_rescues, owner=worker.worker_id)
            try:
                outcome = worker.runtime.store.job_rescue(params)
            except StoreError:
                continue  # left to the leases
            if outcome is not None:
                worker.runtime.events.emit(
                    "job.rescued", job_id=job.id, task=job.task, fence=job.fence,
                    owner=worker.worker_id, outcome=str(outcome.state), reason="worker_gone",
                    rescues=outcome.rescues)
        return len(running)

    def stop(self) -> None:
        self._stop.set()
        self._hold.release()
