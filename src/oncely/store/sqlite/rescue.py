"""Rescue and liveness for the SQLite store (types and transition in :mod:`oncely.store.rescue`).

Liveness on one machine: each worker holds an exclusive ``flock`` on its own file in the folder
``<database>.workers/`` beside the database, from start to stop. The kernel releases it when the
process dies, however it dies (SIGKILL, OOM, a crash), and not while it is merely stopped or slow.
Whoever can take the lock without waiting has proved the owner gone. flock locks belong to an open
file, so a probe from another worker in the same process is refused like any other while the owner
holds its lock. A worker removes its file when it stops; a worker that died leaves its (empty)
file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import threading

from oncely.store.rescue import JobRescue, RescueOutcome, rescue_message, rescue_note
from oncely.store.rows import dump_error, to_epoch
from oncely.store.sqlite.dialect import QUERIES, fetch, fetch_one, to_job
from oncely.types import Job, JobError, JobState, SlotOutcome


def rescue_job(conn: sqlite3.Connection, params: JobRescue) -> RescueOutcome | None:
    now = to_epoch(params.now)
    target = fetch_one(conn, "job_rescue_target", {
        "job_id": params.job_id, "fence": params.fence, "now": now, "owner": params.owner,
    })
    if target is None:
        return None
    rescues = int(target["rescues"]) + 1
    retry = rescues <= params.max_rescues
    error = JobError(int(target["attempt"]), params.now, params.kind,
                     rescue_message(params, rescues))
    conn.execute(QUERIES["job_rescue"], {
        "job_id": params.job_id, "retry": retry, "now": now, "error": dump_error(error),
    })
    if target["singleton_key"] is not None:
        conn.execute(QUERIES["lease_release"],
                     {"key": target["singleton_key"], "fence": params.fence})
    if target["schedule"] is not None:
        conn.execute(QUERIES["slot_note_rescue"], {
            "schedule": target["schedule"], "slot": target["slot"], "job_id": params.job_id,
            "outcome": None if retry else str(SlotOutcome.FAILED),
            "note": rescue_note(params, rescues), "now": now,
        })
    return RescueOutcome(params.job_id, JobState.RETRYABLE if retry else JobState.FAILED,
                         rescues)


def running_of(conn: sqlite3.Connection, owner: str, limit: int) -> list[Job]:
    return [to_job(row) for row in fetch(conn, "job_running_of", {"owner": owner,
                                                                   "limit": limit})]


def set_liveness(conn: sqlite3.Connection, worker_id: str, token: str | None) -> None:
    conn.execute(QUERIES["worker_liveness_set"], {"worker_id": worker_id, "liveness": token})


def owners_gone(conn: sqlite3.Connection, worker_id: str) -> list[str]:
    """Owners of running jobs (other than ``worker_id``) whose liveness lock is free."""
    rows = fetch(conn, "worker_running_owners", {"worker_id": worker_id})
    return [row["worker_id"] for row in rows if lock_is_free(row["liveness"])]


def lock_is_free(path: str) -> bool:
    """True when nobody holds the flock on ``path``: its owner's process is gone. A missing or
    unreadable file proves nothing."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: the owner lives
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def lock_path(database: str, worker_id: str) -> str:
    digest = hashlib.sha256(worker_id.encode()).hexdigest()[:24]
    return os.path.join(f"{database}.workers", f"{digest}.lock")


class FlockHold:
    """The worker's flock; the kernel, not this object, is what releases it on death."""

    def __init__(self, database: str, worker_id: str) -> None:
        self.token: str | None = lock_path(database, worker_id)
        self.incarnation: str | None = None  # a kernel lock is only ever lost with its process
        os.makedirs(os.path.dirname(self.token), exist_ok=True)
        self._fd = os.open(self.token, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise
        self._released = threading.Event()

    def lost(self, timeout: float) -> bool:
        # Nothing but the death of this process releases an flock it holds.
        self._released.wait(timeout)
        return False

    def release(self) -> None:
        if self._released.is_set():
            return
        self._released.set()
        if self.token is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.token)
        with contextlib.suppress(OSError):
            os.close(self._fd)
