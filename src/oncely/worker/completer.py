"""The completer: records finished jobs in batches.

Handler threads hand their outcome here and move on to the next job; this thread writes whatever
finished meanwhile in one store transaction (``job_finish_many``), each transition still fenced
on its own. Under load that turns N small write transactions into one, which is what bounds an
embedded SQLite store. A job's handler slot is freed only after its outcome is recorded, so the
claim loop never has more jobs in hand than its concurrency.

If the store is unreachable the batch is retried with backoff until the earliest lease deadline
in it passes; then the worker gives those outcomes up and the rescuer retries the jobs once their
leases expire (at-least-once, with fences guarding what the handler wrote).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from oncely.errors import StoreError
from oncely.worker.execute import Outcome
from oncely.worker.running import Running

if TYPE_CHECKING:
    from oncely.worker.worker import Worker

log = logging.getLogger("oncely.worker")

MAX_BATCH = 256
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
        worker = self.worker
        clock = worker.runtime.clock
        deadline = min(running.lease_deadline for running, _ in batch)
        delay = 0.05
        while True:
            now = clock.now()
            try:
                applied: list[bool | None] = list(worker.runtime.store.job_finish_many(
                    [outcome.finish(running.job, now) for running, outcome in batch]
                ))
                worker.note_store_ok()
                break
            except StoreError as exc:
                worker.note_store_error(exc)
                if clock.monotonic() >= deadline:
                    log.error("could not record %d job outcomes before their lease deadline; "
                              "the rescuer will retry those jobs", len(batch))
                    applied = [None] * len(batch)
                    break
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:
                # Not a store outage but a bug: retrying will not help. Give the outcomes up as
                # if the store were unreachable, so the handler slots are freed and the leases
                # lapse for the rescuer — never keep them in hand for ever.
                log.exception("recording %d job outcomes failed; the rescuer will retry those "
                              "jobs", len(batch))
                applied = [None] * len(batch)
                break
        for (running, outcome), ok in zip(batch, applied, strict=True):
            worker.recorded(running, outcome, ok)
