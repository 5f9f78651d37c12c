"""Book-keeping for one claimed job inside a worker process, and its state machine.

A job is in the worker's hands from its claim until its outcome is recorded or its lease is
given up. What matters for the singleton promise ("never two executions of one key at once") is
that the job's lease — and with it its singleton key — stays held and renewed for as long as the
handler's code runs, even after the worker stopped waiting for it::

    claimed ──► started ──► handler returns ──────────────────────────► finished (recorded)
                  │
                  ├─ timeout passes ─► stop requested (ctx.cancelled; a process handler gets
                  │                    SIGTERM) ─► the handler stops ─► finished (timeout)
                  │                        │
                  │                        └─ grace passes, the code still runs:
                  │                             thread: OVERRUNNING — a new handler thread takes
                  │                               the slot, the lease is still renewed, the job
                  │                               stays ``running``; when the code returns at last
                  │                               ─► finished (timeout, "overran its timeout …")
                  │                             process: SIGKILL ─► reaped ─► finished (timeout)
                  ├─ cancel requested ─► stop requested (as above, without the overrun: the
                  │                      handler keeps its slot and lease until it stops)
                  └─ lease lost (refused renewal, or self-fenced at the local deadline)
                       ─► given up: nothing is recorded; a process handler is killed at once;
                          a thread cannot be killed — its writes through ``ctx.fenced()`` and
                          ``ctx.checkpoint()`` are refused (it is a zombie)

``finished`` is a latch (:meth:`Running.claim_finish`): whoever sets it first — the handler's
thread with its outcome, the keeper giving the lease up, shutdown releasing the job — decides what
is recorded; the others record nothing. An overrunning job is not released at shutdown: its lease
lapses when the worker process exits (which ends the code), and the rescuer retries it. (A worker
embedded in a process that lives on after ``stop()`` cannot end such a thread; use
``isolation="process"`` for handlers that may ignore their timeout.)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from oncely.types import Job
from oncely.worker.context import JobContext


@dataclass(eq=False)
class Running:
    job: Job
    ctx: JobContext
    lease_deadline: float  # monotonic: stop the job before this unless a renewal succeeds
    start_by: float = float("inf")  # monotonic: still queued (prefetched) then → released
    started: float | None = None  # monotonic, when the handler began
    timeout_at: float | None = None  # monotonic, when the task's timeout passes
    abandon_at: float | None = None  # monotonic, when a stop request turns into an overrun
    finished: bool = False  # an outcome was recorded (or the job was given up): first one wins
    begun: bool = False  # a handler thread took it (it can no longer be released unstarted)
    recording: bool = False  # its outcome waits in the completer (the worker's lock guards it)
    replaced: bool = False  # its handler thread was written off and a new one started
    overrunning: bool = False  # its code ignored the timeout and still runs (lease kept)
    isolated: bool = False  # the handler runs in a child process (killed, never overrunning)
    process: Any = None  # the child process of a process-isolated handler, while it runs
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim_begin(self) -> bool:
        """True when the calling handler thread may run the job: nobody finished or released
        it first (a queued job is either begun or released, never both)."""
        with self.lock:
            if self.finished:
                return False
            self.begun = True
            return True

    def claim_release(self) -> bool:
        """True when the job was still queued (prefetched) and is now the caller's to hand
        back to the store."""
        with self.lock:
            if self.finished or self.begun:
                return False
            self.finished = True
            return True

    def claim_finish(self) -> bool:
        """True exactly once: whoever gets it records the job's outcome."""
        with self.lock:
            if self.finished:
                return False
            self.finished = True
            return True

    def kill_process(self, timeout: float = 5.0) -> None:
        """Kill a process-isolated handler now and wait until it is gone (no-op for threads)."""
        process = self.process
        if process is not None and process.is_alive():
            process.kill()
            process.join(timeout)
