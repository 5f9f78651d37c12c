"""Book-keeping for one claimed job inside a worker process."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from oncely.types import Job
from oncely.worker.context import JobContext


@dataclass(eq=False)
class Running:
    job: Job
    ctx: JobContext
    lease_deadline: float  # monotonic: stop the job before this unless a renewal succeeds
    started: float | None = None  # monotonic, when the handler began
    timeout_at: float | None = None  # monotonic, when the task's timeout passes
    abandon_at: float | None = None  # monotonic, when a stop request turns into abandonment
    finished: bool = False  # an outcome was recorded (or the job was given up): first one wins
    replaced: bool = False  # its handler thread was written off and a new one started
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim_finish(self) -> bool:
        """True exactly once: whoever gets it records the job's outcome."""
        with self.lock:
            if self.finished:
                return False
            self.finished = True
            return True
