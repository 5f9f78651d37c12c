"""Rescue and liveness at the storage seam: the types of ``job_rescue``, ``job_running_of``,
``worker_owners_gone`` and ``liveness_hold`` (see :class:`oncely.store.base.Store`).

Rescue transition
=================

::

    running (fence f, lease of owner O) ──rescue──► retryable, run_at = now, attempt given back,
        │   when the lease expired at now,           rescues + 1          (rescues < max_rescues)
        │   or O is proven gone (``owner`` = O)  └─► failed, with every rescue in its errors
        │                                                                   (rescues = max_rescues)
        └── anything else (fence moved on, O renewed, already finished) ──► nothing, None

A rescue is a fenced transition like ``job_finish``: it applies only while the job still runs under
fence f, and re-checks, inside its transaction, either the expiry (a renewal that won the race
keeps the job) or the owner (a job claimed again since by someone else is not touched). It frees
the singleton key's lease if that fence still holds it, appends a ``lease_expired`` or
``worker_gone`` error whose message begins ``rescued``, and notes the rescue on the slot's ledger
row (whose outcome stays ``enqueued`` until the re-run ends). The attempt is given back because an
attempt lost to a dead worker is not the handler's failure; ``rescues`` bounds how often that
can happen, so a job that kills its worker every time still ends ``failed``. A rescued first run
of a slot is claimed like a first run: the schedule's overlap policy applies to it again.

The transition is written once, for both dialects, in :mod:`oncely.store.ops.rescue`; whether a
rescue retries or fails the job, and what its error and ledger note say, is
:mod:`oncely.lifecycle`'s (:func:`~oncely.lifecycle.rescue_state`).

Liveness hold
=============

A :class:`LivenessHold` is the store's proof that a worker's process (SQLite) or session
(PostgreSQL) is alive: an ``flock`` on a file beside the database, released by the kernel when the
process dies, or a session-level advisory lock on a dedicated connection, released by the server
when the session ends. ``worker_owners_gone`` names the owners of running jobs whose worker row
carries a liveness token and whose lock is free: those are provably gone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from oncely.types import ErrorKind, JobState

DEFAULT_MAX_RESCUES = 3


def holder_overdue(expires_in: float, lease_ttl: float) -> bool:
    """Whether a singleton key's holder, whose lease runs out in ``expires_in`` seconds, has
    missed a renewal: a holder that renews every third of the TTL always has more than two
    thirds left. A claim does not skip a slot for the sake of such a holder (it is probably dead
    or frozen); the slot waits for the lease to run out, or to be renewed after all."""
    return expires_in < lease_ttl / 3


@dataclass(frozen=True)
class JobRescue:
    """Rescue one running job. ``owner`` set: its worker is proven gone (the lease need not have
    expired, but must still be that owner's); None: the lease must have expired at ``now``."""

    job_id: int
    fence: int
    now: datetime
    reason: str  # why: "lease expired at …" / "worker … is gone"
    max_rescues: int = DEFAULT_MAX_RESCUES
    owner: str | None = None

    @property
    def kind(self) -> ErrorKind:
        return ErrorKind.WORKER_GONE if self.owner is not None else ErrorKind.LEASE_EXPIRED


@dataclass(frozen=True)
class RescueOutcome:
    job_id: int
    state: JobState  # retryable (back to work) or failed (rescue budget spent)
    rescues: int  # rescues so far, this one included


class LivenessHold(Protocol):
    """A worker's liveness lock, held from :meth:`Store.liveness_hold` until :meth:`release`."""

    token: str | None  # recorded in the worker's row; None: nothing can prove this worker dead
    # the store's incarnation the lock was taken on (PostgreSQL: the server's start time); a lock
    # lost to a restart of the server proves nothing, so its holder need not fence itself
    incarnation: str | None

    def lost(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True as soon as the lock is known to be lost."""

    def release(self) -> None: ...


class NoHold:
    """No liveness lock (an in-memory database, or none could be taken): timeouts only."""

    token: str | None = None
    incarnation: str | None = None

    def __init__(self) -> None:
        self._released = threading.Event()

    def lost(self, timeout: float) -> bool:
        self._released.wait(timeout)
        return False

    def release(self) -> None:
        self._released.set()
