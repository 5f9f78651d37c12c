"""The JobContext a handler receives as its first argument.

It carries the job's identity and its **fence**, and the means to act safely while the job runs:

* ``ctx.fenced()`` — a transaction on the job store that commits only while this attempt's fence
  is current and its lease unexpired; the fence row stays locked until it commits, so a worker
  that took over cannot interleave. Use it for writes to the same database::

      with ctx.fenced() as conn:
          conn.execute("UPDATE orgs SET usage = ? WHERE id = ?", (usage, org_id))

  ``ctx.fenced(checkpoint=data)`` saves progress in that same transaction. An attempt cut short
  after its writes committed (its worker killed before it finished) is given back and runs
  again; the checkpoint is how the re-run learns the writes were done::

      if ctx.last_checkpoint != "usage-written":
          with ctx.fenced(checkpoint="usage-written") as conn:
              conn.execute("UPDATE orgs SET usage = ? WHERE id = ?", (usage, org_id))

* ``ctx.check_fence()`` — raises :class:`~oncely.errors.FenceRejected` if the fence is no longer
  current. For calls to other systems, check the fence right before the call *and* pass an
  idempotency key derived from the job (``f"{ctx.job.id}:{item}"`` or the slot), so a call that
  slips through just before a takeover is deduplicated by the receiver.
* ``ctx.heartbeat()`` — renew the lease now (the worker also renews it in the background).
* ``ctx.checkpoint(data)`` / ``ctx.last_checkpoint`` — save progress (fenced); a retried or
  taken-over attempt starts with the last saved value and can resume.
* ``ctx.cancelled`` / ``ctx.raise_if_cancelled()`` — cooperative cancellation: set when a human
  cancels the job, when its timeout passes, when the worker shuts down or when the lease is lost.
  A thread cannot be stopped from outside: a handler that ignores this keeps its job (and its
  singleton key) until it returns. Tasks declared with ``isolation="process"`` run in a child
  process the worker kills instead (:mod:`oncely.worker.isolation`, which lists what of this
  context a child process has).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from oncely.errors import Cancel, FenceRejected
from oncely.types import ErrorKind, Job
from oncely.worker.storable import checked_checkpoint

if TYPE_CHECKING:
    from oncely.app import App
    from oncely.runtime import Runtime

log = logging.getLogger("oncely.job")


_EVENT_LOCK = threading.Lock()
_NO_CHECKPOINT = object()  # fenced() saves no checkpoint unless given one (None is a value)


class JobContext:
    # Built once per claimed job on the worker's hot path: what a handler rarely touches (the
    # cancel event it may wait on, its logger) is created on first use.
    def __init__(self, runtime: Runtime, job: Job, worker_id: str) -> None:
        self.runtime = runtime
        self.app: App = runtime.app  # the application, for handlers (enqueue follow-up jobs)
        self.job = job
        self.worker_id = worker_id
        self._cancel_event: threading.Event | None = None
        self.cancel_reason: str | None = None
        self.cancel_kind = ErrorKind.CANCELLED
        self._lease_lost: threading.Event | None = None
        self._checkpoint = job.checkpoint
        self.heartbeat_hook: Any = None  # set by the worker: renews this job's lease now
        self._log: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def cancel_event(self) -> threading.Event:
        """Set when the job is asked to stop; a handler may ``wait()`` on it between steps."""
        if self._cancel_event is None:
            with _EVENT_LOCK:
                if self._cancel_event is None:
                    self._cancel_event = threading.Event()
        return self._cancel_event

    @property
    def lease_lost(self) -> threading.Event:
        """Set when the worker lost this job's lease (the job is asked to stop as well)."""
        if self._lease_lost is None:
            with _EVENT_LOCK:
                if self._lease_lost is None:
                    self._lease_lost = threading.Event()
        return self._lease_lost

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that tags each record with the job's id and task."""
        if self._log is None:
            self._log = logging.LoggerAdapter(log, {"job_id": self.job.id, "task": self.job.task})
        return self._log

    # identity ----------------------------------------------------------------------------
    @property
    def job_id(self) -> int:
        return self.job.id

    @property
    def fence(self) -> int:
        return self.job.fence

    @property
    def attempt(self) -> int:
        return self.job.attempt

    @property
    def slot(self) -> datetime | None:
        return self.job.slot

    @property
    def schedule(self) -> str | None:
        return self.job.schedule

    @property
    def args(self) -> dict[str, Any]:
        return self.job.args

    def now(self) -> datetime:
        return self.runtime.clock.now()

    # fencing -----------------------------------------------------------------------------
    def check_fence(self) -> None:
        """Raise FenceRejected unless this attempt still holds the current fence."""
        if self.lease_lost.is_set() or not self.runtime.store.job_fence_current(
            self.job.id, self.job.fence, self.now()
        ):
            self._rejected()

    @contextlib.contextmanager
    def fenced(self, checkpoint: Any = _NO_CHECKPOINT) -> Iterator[Any]:
        """A store transaction that commits only under the current fence (see module doc).

        With ``checkpoint``, that progress is saved in the same transaction: it commits with the
        writes or not at all, so a later attempt (a retry, or a re-run after a rescue) that reads
        it in ``last_checkpoint`` knows those writes are done."""
        saving = checkpoint is not _NO_CHECKPOINT
        if saving:
            checkpoint = checked_checkpoint(checkpoint, self.job.id)
        if self.lease_lost.is_set():
            self._rejected()
        try:
            store = self.runtime.store
            now = self.now()
            with store.fenced_transaction(self.job.id, self.job.fence, now) as conn:
                # Joins the fenced transaction (the store's calls run on its connection).
                if saving and not store.job_checkpoint(self.job.id, self.job.fence, checkpoint,
                                                       now):
                    raise FenceRejected(self.job.id, self.job.fence)
                yield conn
        except FenceRejected:
            self._rejected()
        if saving:
            self._checkpoint = checkpoint

    def _rejected(self) -> None:
        self.runtime.events.emit(
            "fence.rejected", job_id=self.job.id, fence=self.job.fence, task=self.job.task
        )
        raise FenceRejected(self.job.id, self.job.fence)

    def heartbeat(self) -> None:
        """Renew this job's lease now; raises FenceRejected if it was lost."""
        if self.heartbeat_hook is not None and not self.heartbeat_hook():
            self._rejected()

    # checkpoints -------------------------------------------------------------------------
    @property
    def last_checkpoint(self) -> Any:
        return self._checkpoint

    def checkpoint(self, data: Any) -> None:
        """Save progress under the fence; a later attempt reads it as ``last_checkpoint``.
        Raises ArgsNotJSON, naming the reason, for data the store cannot hold."""
        data = checked_checkpoint(data, self.job.id)
        if not self.runtime.store.job_checkpoint(self.job.id, self.job.fence, data, self.now()):
            self._rejected()
        self._checkpoint = data

    # cancellation ------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        event = self._cancel_event
        return event is not None and event.is_set()

    def request_cancel(self, reason: str, kind: ErrorKind = ErrorKind.CANCELLED) -> None:
        """Ask the handler to stop; the first request's reason and kind decide the outcome."""
        if kind == ErrorKind.LEASE_LOST:
            self.lease_lost.set()
        if not self.cancel_event.is_set():
            self.cancel_reason = reason
            self.cancel_kind = kind
            self.cancel_event.set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancel(self.cancel_reason or "cancelled")

    def __repr__(self) -> str:
        return f"<JobContext job={self.job.id} task={self.job.task} fence={self.job.fence}>"
