"""Liveness for the SQLite store (the rescue it proves due is :mod:`oncely.store.rescue`).

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
import threading


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
