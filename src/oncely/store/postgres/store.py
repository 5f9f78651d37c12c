"""The scale-out store: workers on many machines share one PostgreSQL database.

:class:`PostgresStore` is the :class:`~oncely.store.sqlstore.SQLStore` on the PostgreSQL dialect,
with psycopg 3 and a ``psycopg_pool`` connection pool. The URL is
``postgresql://user@host:port/db`` with optional parameters of oncely's own: ``schema=name`` (the
schema holding oncely's tables, created by :meth:`~PostgresStore.migrate`; default ``public``) so
several apps can share one database, ``pool_max=N`` (connections per store, default 10) and
``listen=off``. Every other parameter goes to libpq. Sessions run in UTC with
``idle_in_transaction_session_timeout`` at 10 s, so a worker paused in the middle of a
transaction cannot hold rows the fleet needs for longer (a URL
``options=-c idle_in_transaction_session_timeout=…`` overrides it), and with JIT compilation off
(it cost whole seconds per claim when an estimate crossed ``jit_above_cost``).

Claims lock rows with ``FOR UPDATE SKIP LOCKED`` and skip lease rows others hold, so claimers
never wait for one another; every writer locks a job row before a lease row, so they cannot
deadlock. Idle workers sleep in ``LISTEN oncely_jobs`` and wake when an enqueue, retry or
retryable finish commits. What differs from SQLite is here: the claim, finish and lease cycle
(``claim.py``; the controls' part of a claim in ``controls.py``), the bulk enqueue and the fenced
transaction's row locks (``jobs.py``), LISTEN (``listen.py``) and the wake-ups finishes send
(``wakeups.py``); the pool in ``engine.py``; the liveness lock (``liveness.py``) is the dialect's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from oncely.errors import FenceRejected
from oncely.store.base import (
    ClaimResult,
    JobClaimParams,
    JobFinish,
    JobInsert,
    JobInsertResult,
    LeaderState,
    LeaseRenewal,
    RenewResult,
)
from oncely.store.controls import Control, ControlUsage
from oncely.store.ops import claimpolicy
from oncely.store.ops.jobs import is_plain_success
from oncely.store.postgres import claim, controls, jobs, limited, wakeups
from oncely.store.postgres.dialect import PostgresDialect, fetch
from oncely.store.postgres.engine import Engine
from oncely.store.postgres.listen import Listener
from oncely.store.postgres.target import parse_url
from oncely.store.sqlstore import SQLStore


class PostgresStore(SQLStore[PostgresDialect]):
    """The :class:`~oncely.store.base.Store` on the PostgreSQL database a URL names.

    Nothing connects until the first operation, which fails fast with
    :class:`~oncely.errors.StoreUnavailable` when the server cannot be reached.
    """

    dialect = PostgresDialect.name

    def __init__(self, url: str) -> None:
        self.target = parse_url(url)
        self.schema = self.target.schema
        self._engine = Engine(self.target)
        self._listener = Listener(self.target)
        self._wake = wakeups.LimitedWake()
        self._limited_first = False  # the last claim met controls: try the limited claim first
        super().__init__(url, PostgresDialect(self._engine))

    def __repr__(self) -> str:
        return f"PostgresStore({self.target.where!r}, schema={self.schema!r})"

    def close(self) -> None:
        self._listener.close()
        super().close()

    # the run cycle ----------------------------------------------------------------------------

    def job_insert_many(self, params: Sequence[JobInsert], now: datetime) -> list[JobInsertResult]:
        if not params:
            return []
        return self._engine.run(partial(jobs.insert_jobs, self.sql, params=params, now=now))

    def job_claim(self, params: JobClaimParams) -> ClaimResult:
        # Three claims, each one exact and each saying when it cannot serve: the one-statement
        # claim (no control, no due singleton or policy slot job), the limited claim (controls
        # that limit no job twice) and the full claim. A store starts where its last claim was
        # served, so a worker of limited queues does not try the first one every time.
        if not self._limited_first:
            fast = self._engine.run(lambda conn: claim.claim_fast(conn, params), autocommit=True)
            if fast is not None:
                return fast
        self._wake.saw_full_claim()
        served = self._engine.run(lambda conn: limited.claim_limited(conn, params),
                                  autocommit=True)
        if served is not None:
            result, self._limited_first = served
            return result
        self._limited_first = True
        return self._engine.run(lambda conn: claimpolicy.claim_after_policies(
            self.sql, conn, params, lambda conn: claim.claim_jobs(conn, params)))

    def job_finish(self, params: JobFinish) -> bool:
        wake = self._wake.active
        return self._engine.run(lambda conn: wakeups.finish_waking(conn, params, wake))

    def job_finish_many(self, params: Sequence[JobFinish]) -> list[bool]:
        # Plain successes first, in one statement of their own (one round trip); the rest, and
        # any it did not take, in one transaction.
        wake = self._wake.active
        plain = [p for p in params if is_plain_success(p)]
        done = (self._engine.run(lambda conn: claim.finish_plain(conn, plain, wake),
                                 autocommit=True)
                if plain else set())
        if len(done) == len(params):
            return [True] * len(params)
        return self._engine.run(lambda conn: wakeups.finish_many_waking(conn, params, done, wake))

    def read_usage(
        self, conn: Any, active: Sequence[Control], keys: Sequence[str] = (), depth: int = 1
    ) -> ControlUsage:
        return controls.read_usage(conn, active, keys, depth)

    def lease_renew(
        self, worker_id: str, now: datetime, ttl: float, leases: Sequence[LeaseRenewal]
    ) -> dict[int, RenewResult]:
        if not leases:
            return {}
        return self._engine.run(lambda conn: claim.renew_leases(conn, worker_id, now, ttl, leases))

    def leader_elect(self, worker_id: str, now: datetime, ttl: float) -> LeaderState:
        return self._engine.run(lambda conn: claim.elect_leader(conn, worker_id, now, ttl))

    # transactions and wake-ups ----------------------------------------------------------------

    @contextlib.contextmanager
    def fenced_transaction(self, job_id: int, fence: int, now: datetime) -> Iterator[Any]:
        """A transaction that first share-locks the job row and its key's lease row and checks
        the fence; the locks keep the fence current (no finish, rescue, takeover or renewal can
        commit) until this transaction ends."""
        with self._engine.transaction(map_body=False) as conn:
            live = self._engine.joined(conn, lambda c: jobs.lock_fence(c, job_id, fence, now))
            if not live:
                raise FenceRejected(job_id, fence)
            yield conn

    def wait_for_work(self, timeout: float) -> bool:
        return self._listener.wait(timeout)

    def notify_work(self, queue: str) -> None:
        self._engine.run(lambda conn: fetch(conn, "notify_work", {"queue": queue}))
