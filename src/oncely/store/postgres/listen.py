"""The LISTEN connection behind :meth:`PostgresStore.wait_for_work
<oncely.store.postgres.store.PostgresStore.wait_for_work>`.

Enqueues, retries and retryable finishes run ``pg_notify('oncely_jobs', '<schema>:<queue>')`` in
their own transaction, so the notification is delivered when (and only if) they commit. Each store
keeps one autocommit connection listening on that channel, opened on the first wait. When it is
lost, waits fall back to sleeping (the caller's poll interval still finds the work) and the
connection is re-opened on a later wait. With ``listen=off`` in the URL (a connection pooler
in transaction mode cannot hold a LISTEN), waits only sleep and workers find work by polling.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import psycopg
from psycopg.rows import TupleRow

from oncely.store.postgres.dialect import QUERIES
from oncely.store.postgres.target import CONNECT_TIMEOUT, Target

LISTEN_RETRY = 1.0  # seconds between attempts to re-open a lost LISTEN connection


class Listener:
    """One LISTEN connection per store, opened on first wait and re-opened after a failure."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.prefix = f"{target.schema}:"
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._retry_at = 0.0
        self._closed = False
        self._pid = os.getpid()

    def _connection(self, deadline: float) -> psycopg.Connection[TupleRow] | None:
        if os.getpid() != self._pid:
            # A forked child must not read its parent's socket.
            self._pid, self._conn = os.getpid(), None
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._closed or time.monotonic() < self._retry_at:
            return None
        # libpq waits at least 2 s; a wait_for_work(0.5) may overrun to that, never to 5 s.
        limit = max(2, min(CONNECT_TIMEOUT, round(deadline - time.monotonic())))
        try:
            conn = psycopg.connect(self.target.conninfo, autocommit=True, connect_timeout=limit)
            conn.execute(QUERIES["listen"])
        except psycopg.Error:
            self._retry_at = time.monotonic() + LISTEN_RETRY
            return None
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._retry_at = time.monotonic() + LISTEN_RETRY
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def wait(self, timeout: float) -> bool:
        """True as soon as a job is announced for this schema; False after ``timeout``."""
        deadline = time.monotonic() + max(0.0, timeout)
        if not self.target.listen:
            time.sleep(max(0.0, timeout))  # listen=off: the caller polls
            return False
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            conn = self._connection(deadline)
            if conn is not None:
                try:
                    return self._wait_on(conn, deadline)
                except psycopg.Error:
                    self._drop()
                finally:
                    if self._closed:
                        self._drop()
        finally:
            self._lock.release()
        # Without a LISTEN connection the caller's poll interval still finds the work.
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        return False

    def _wait_on(self, conn: psycopg.Connection[TupleRow], deadline: float) -> bool:
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            for notify in conn.notifies(timeout=remaining, stop_after=1):
                # The channel is database-wide; other schemas' jobs are not ours.
                if notify.payload.startswith(self.prefix):
                    return True
            if time.monotonic() >= deadline:
                return False

    def close(self) -> None:
        self._closed = True
        # A thread blocked in wait() holds the lock until its timeout; it drops the connection
        # itself when it sees the store closed.
        if self._lock.acquire(timeout=0.1):
            try:
                self._drop()
            finally:
                self._lock.release()
