"""Rescue, liveness and release wake-ups for the PostgreSQL store (types and transition in
:mod:`oncely.store.rescue`).

Liveness across machines: each worker opens one dedicated connection of its own (outside the pool)
and takes a session-level advisory lock on it, ``(space, key)``: ``space`` names the oncely schema,
``key`` the worker. The server releases the lock the moment that session ends: the process died
(its socket closed), the connection was terminated (``pg_terminate_backend``), or the server
noticed a dead peer through TCP keepalives. Any worker proves another one gone by finding its
lock absent from ``pg_locks`` — provided the owner took it on the server's current incarnation
(its start time, recorded in the token ``key@incarnation``): a restart of the server ends every
session at once and proves nobody dead, so owners whose lock predates it are left to their leases
until they take a new one. The lock says nothing about a worker that is alive but frozen or cut
off while its session lives on: for those, the lease TTL remains the bound.

The connection is watched from the worker's side too: when its socket turns readable (the server
announced the end of the session, or the peer vanished and keepalives gave up), one ping tells
whether it is still there. If not, the hold is lost and the worker fences itself
(:mod:`oncely.worker.liveness`).
"""

from __future__ import annotations

import contextlib
import hashlib
import select
import threading
import time
import zlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from oncely.errors import StoreError
from oncely.store.base import JobFinish
from oncely.store.postgres import claim
from oncely.store.postgres.dialect import QUERIES, errors_json, execute, fetch, fetch_one, to_job
from oncely.store.postgres.target import CONNECT_TIMEOUT, Target, unreachable
from oncely.store.rescue import JobRescue, RescueOutcome, rescue_message, rescue_note
from oncely.store.rows import utc
from oncely.types import Job, JobError, JobState

# The liveness connection notices a peer that vanished without closing (a partition) after
# about KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT seconds of silence.
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3


def rescue_job(conn: psycopg.Connection[Any], params: JobRescue) -> RescueOutcome | None:
    now = utc(params.now)
    target = fetch_one(conn, "job_rescue_target", {
        "job_id": params.job_id, "fence": params.fence, "now": now, "owner": params.owner,
    })
    if target is None:
        return None
    rescues = int(target["rescues"]) + 1
    retry = rescues <= params.max_rescues
    error = JobError(int(target["attempt"]), params.now, params.kind,
                     rescue_message(params, rescues))
    fetch(conn, "job_rescue", {
        "job_id": params.job_id, "fence": params.fence, "retry": retry, "now": now,
        "errors": errors_json(error), "note": rescue_note(params, rescues),
    })
    return RescueOutcome(params.job_id, JobState.RETRYABLE if retry else JobState.FAILED,
                         rescues)


def running_of(conn: psycopg.Connection[Any], owner: str, limit: int) -> list[Job]:
    return [to_job(row) for row in fetch(conn, "job_running_of", {"owner": owner,
                                                                  "limit": limit})]


def set_liveness(conn: psycopg.Connection[Any], worker_id: str, token: str | None) -> None:
    execute(conn, "worker_liveness_set", {"worker_id": worker_id, "liveness": token})


def owners_gone(conn: psycopg.Connection[Any], worker_id: str, schema: str) -> list[str]:
    rows = fetch(conn, "worker_owners_gone", {"worker_id": worker_id, "space": space_of(schema)})
    return [row["worker_id"] for row in rows]


def notify_released(conn: psycopg.Connection[Any], job_ids: Sequence[int]) -> None:
    """Wake idle claimers of the queues where these finished jobs freed room (see SQL)."""
    if job_ids:
        fetch(conn, "notify_released", {"job_ids": list(job_ids)})


class LimitedWake:
    """Whether finishes should wake claimers waiting for room in a limited queue or task: for
    ``WINDOW`` seconds after one of this store's claims needed the full path (queue controls or
    singleton jobs in play), so the hot path of plain jobs pays nothing otherwise. A finish that
    frees a singleton key wakes them anyway, inside ``job_finish``."""

    WINDOW = 60.0

    def __init__(self) -> None:
        self._full_claim_at = -self.WINDOW

    def saw_full_claim(self) -> None:
        self._full_claim_at = time.monotonic()

    @property
    def active(self) -> bool:
        return time.monotonic() - self._full_claim_at < self.WINDOW


def finish_waking(conn: psycopg.Connection[Any], params: JobFinish, wake: bool) -> bool:
    done = claim.finish_job(conn, params)
    if done and wake:
        notify_released(conn, [params.job_id])
    return done


def finish_many_waking(conn: psycopg.Connection[Any], batch: Sequence[JobFinish],
                       done: set[int], wake: bool) -> list[bool]:
    results = claim.finish_jobs(conn, batch, done)
    if wake:
        notify_released(conn, [p.job_id for p, ok in zip(batch, results, strict=True)
                               if ok and p.job_id not in done])
    return results


def space_of(schema: str) -> int:
    return zlib.crc32(f"oncely.liveness:{schema}".encode()) & 0x7FFFFFFF


def key_of(worker_id: str) -> int:
    return int.from_bytes(hashlib.sha256(worker_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


class AdvisoryHold:
    """A worker's liveness lock: a session-level advisory lock on a connection of its own."""

    def __init__(self, target: Target, worker_id: str) -> None:
        self.token: str | None = None
        self._lock = threading.Lock()
        self._lost = False
        try:
            self._conn: psycopg.Connection[TupleRow] = psycopg.connect(
                target.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                keepalives=1, keepalives_idle=KEEPALIVE_IDLE,
                keepalives_interval=KEEPALIVE_INTERVAL, keepalives_count=KEEPALIVE_COUNT,
            )
        except psycopg.Error as exc:
            raise unreachable(target.where, exc) from None
        try:
            row = fetch_one(self._conn, "liveness_lock",
                            {"space": space_of(target.schema), "key": key_of(worker_id)})
        except psycopg.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot take the liveness lock: {exc}") from None
        if row is None or not row["held"]:
            self._conn.close()
            raise StoreError(f"the liveness lock of worker {worker_id!r} is held by another "
                             "session")
        self.incarnation: str | None = str(row["incarnation"])
        self.token = f"{key_of(worker_id)}@{self.incarnation}"

    def lost(self, timeout: float) -> bool:
        """Wait on the connection's socket: silence means the session lives."""
        with self._lock:
            if self._lost or self._conn.closed:
                return True
            fd = self._conn.fileno()
        try:
            readable, _, _ = select.select([fd], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            readable = [fd]
        if not readable:
            return False
        with self._lock:
            if self._conn.closed:
                return True
            try:
                self._conn.execute(QUERIES["liveness_ping"]).fetchall()
            except psycopg.Error:
                self._lost = True
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                return True
        return False

    def release(self) -> None:
        with self._lock:
            self._lost = True
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
