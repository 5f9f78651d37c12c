"""The completer: records finished jobs in batches.

Handler threads hand their outcome here and move on to the next job; this thread writes whatever
finished meanwhile in one store transaction (``job_finish_many``), each transition still fenced
on its own. Under load that turns N small write transactions into one, which is what bounds an
embedded SQLite store. A job keeps its place in the worker's room until its outcome is
recorded, but where the store writes concurrently the claim loop does not wait for this write:
up to another room of outcomes may be on their way here while it claims (see
:mod:`oncely.worker.claimer`).

If the store is unreachable (or contended) the batch is retried with backoff until the earliest
lease deadline in it passes; then the worker gives those outcomes up and the rescuer retries the
jobs once their leases expire (at-least-once, with fences guarding what the handler wrote).

One job's outcome never costs another its record. What the store cannot hold is refused in the
handler thread already (:mod:`oncely.worker.storable`); should the store still refuse the batch
for any other reason than an outage, its outcomes are written one by one, and a job whose own
outcome is refused is written as ``failed`` with ``outcome not storable: …`` instead.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from oncely.errors import StoreBusy, StoreUnavailable
from oncely.lifecycle import JobEvent
from oncely.types import ErrorKind, JobError
from oncely.worker.execute import Outcome, describe
from oncely.worker.running import Running

if TYPE_CHECKING:
    from oncely.worker.worker import Worker

log = logging.getLogger("oncely.worker")

MAX_BATCH = 256
# Store errors worth retrying: the store is unreachable or contended. Any other error is about
# what was written, and would only fail again.
TRANSIENT = (StoreUnavailable, StoreBusy)
Item = tuple[Running, Outcome]


class Completer(threading.Thread):
    def __init__(self, worker: Worker) -> None:
        super().__init__(name="oncely-completer", daemon=True)
        self.worker = worker
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()

    def submit(self, running: Running, outcome: Outcome) -> None:
        self._queue.put((running, outcome))

    def close(self, timeout: float = 10.0) -> None:
        """Record what is queued, then stop."""
        self._queue.put(None)
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, closing = [first], False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            try:
                self._flush(batch)
            except Exception:  # never lose the thread; the rescuer covers what was not recorded
                log.exception("recording %d job outcomes failed", len(batch))
            if closing:
                return

    def _flush(self, batch: list[Item]) -> None:
        applied = self._write_batch(batch)
        if applied is None:
            applied = [self._write_one(running, outcome) for running, outcome in batch]
        self.worker.recorded_many([(running, outcome, ok) for (running, outcome), ok
                                   in zip(batch, applied, strict=True)])

    def _write_batch(self, batch: list[Item]) -> list[bool | None] | None:
        """Write the batch in one call: per job True (written), False (fence refused) or None
        (given up: the store stayed unreachable until the earliest lease deadline). None for the
        whole batch when the store refused it for another reason: one job's row it cannot hold,
        or a bug; retrying the batch would fail the same way, so the caller writes job by job."""
        worker = self.worker
        clock = worker.runtime.clock
        deadline = min(running.lease_deadline for running, _ in batch)
        delay = 0.05
        while True:
            try:
                now = clock.now()
                applied: list[bool | None] = list(worker.runtime.store.job_finish_many(
                    [outcome.finish(running.job, now) for running, outcome in batch]
                ))
                worker.note_store_ok()
                return applied
            except TRANSIENT as exc:
                wait = self._wait_to_retry(exc, delay, deadline)
                if wait is None:
                    log.error("could not record %d job outcomes before their lease deadline; "
                              "the rescuer will retry those jobs", len(batch))
                    return [None] * len(batch)
                delay = wait
            except Exception as exc:
                log.warning("recording %d job outcomes together failed (%s); recording them one "
                            "by one", len(batch), describe(exc))
                return None

    def _wait_to_retry(
        self, exc: StoreUnavailable | StoreBusy, delay: float, deadline: float
    ) -> float | None:
        """After a write lost to an outage or contention: wait ``delay`` (the last wait ends at
        the lease ``deadline``, not after it) and return the next delay, or None once the
        deadline has passed and the outcome is given up."""
        worker = self.worker
        worker.note_store_error(exc)
        left = deadline - worker.runtime.clock.monotonic()
        if left <= 0:
            return None
        time.sleep(min(delay, left))
        return min(delay * 2, 2.0)

    def _write_one(self, running: Running, outcome: Outcome) -> bool | None:
        """Write one outcome; if the store refuses it (not an outage), write the job as failed
        with the reason instead, so that job alone carries the consequence."""
        worker, job = self.worker, running.job
        try:
            return self._finish_retrying(running, outcome)
        except Exception as exc:
            reason = f"outcome not storable: {describe(exc)}"
            log.error("job %d: %s; recording it as failed", job.id, reason)
        error = JobError(job.attempt, worker.runtime.clock.now(), ErrorKind.ERROR, reason)
        replacement = Outcome.of(JobEvent.FAIL, error=error)
        try:
            return self._finish_retrying(running, replacement)
        except Exception:
            log.exception("job %d: could not record even its failure; the rescuer will retry "
                          "it once its lease expires", job.id)
            return None

    def _finish_retrying(self, running: Running, outcome: Outcome) -> bool | None:
        """One fenced finish, retried while the store is unreachable (until the job's lease
        deadline: None). Other errors are raised."""
        worker, job = self.worker, running.job
        clock, store = worker.runtime.clock, worker.runtime.store
        delay = 0.05
        while True:
            try:
                applied = store.job_finish(outcome.finish(job, clock.now()))
                worker.note_store_ok()
                break
            except TRANSIENT as exc:
                wait = self._wait_to_retry(exc, delay, running.lease_deadline)
                if wait is None:
                    return None
                delay = wait
        if not applied:
            # A batch the store took in part (PostgreSQL writes plain successes first) may
            # already hold this outcome under this fence: that is not a rejection.
            stored = store.job_get(job.id)
            applied = (stored is not None and stored.fence == job.fence
                       and stored.state == outcome.state)
        return applied
