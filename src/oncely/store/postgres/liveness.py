"""Liveness for the PostgreSQL store (the rescue it proves due is :mod:`oncely.store.rescue`).

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
import zlib

import psycopg
from psycopg.rows import TupleRow, dict_row

from oncely import sql
from oncely.errors import StoreError
from oncely.store.postgres.target import CONNECT_TIMEOUT, Target, unreachable

# The liveness connection notices a peer that vanished without closing (a partition) after
# about KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT seconds of silence.
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3


def space_of(schema: str) -> int:
    return zlib.crc32(f"oncely.liveness:{schema}".encode()) & 0x7FFFFFFF


def key_of(worker_id: str) -> int:
    return int.from_bytes(hashlib.sha256(worker_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


class AdvisoryHold:
    """A worker's liveness lock: a session-level advisory lock on a connection of its own."""

    def __init__(self, target: Target, worker_id: str, queries: sql.Queries) -> None:
        self.token: str | None = None
        self._queries = queries
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
            with self._conn.cursor(row_factory=dict_row) as cur:
                cur.execute(queries["liveness_lock"],
                            {"space": space_of(target.schema), "key": key_of(worker_id)})
                row = cur.fetchone()
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
                self._conn.execute(self._queries["liveness_ping"]).fetchall()
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
