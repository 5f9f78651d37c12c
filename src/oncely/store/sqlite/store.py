"""The embedded store: one SQLite file shared by any number of local processes (WAL mode).

:class:`SQLiteStore` is the :class:`~oncely.store.sqlstore.SQLStore` on the SQLite dialect. Every
write is one ``BEGIN IMMEDIATE`` transaction: SQLite then holds its single write lock for the
whole claim, finish or enqueue, which is what makes them atomic across processes. Contention is
absorbed by a bounded, jittered retry (:class:`~oncely.errors.StoreBusy` after about 30 s). What
differs from PostgreSQL is here: the claim, finish and lease cycle (``claim.py``, the controls'
part of a claim in ``controls.py``), the fenced transaction and waiting for work (``data_version``);
the liveness lock (``liveness.py``) is the dialect's.
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
    LeaderState,
    LeaseRenewal,
    RenewResult,
)
from oncely.store.controls import Control, ControlUsage
from oncely.store.ops import claimpolicy, jobs
from oncely.store.sqlite import claim, controls
from oncely.store.sqlite.dialect import SQLiteDialect
from oncely.store.sqlite.engine import BUSY_BUDGET, Engine, parse_url
from oncely.store.sqlstore import SQLStore


class SQLiteStore(SQLStore[SQLiteDialect]):
    """The :class:`~oncely.store.base.Store` on a SQLite database named by a ``sqlite://`` URL."""

    dialect = SQLiteDialect.name

    def __init__(self, url: str, *, busy_budget: float = BUSY_BUDGET) -> None:
        self._engine = Engine(parse_url(url), busy_budget)
        super().__init__(url, SQLiteDialect(self._engine))
        self.path = self._engine.path

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    # the run cycle ----------------------------------------------------------------------------

    def job_claim(self, params: JobClaimParams) -> ClaimResult:
        # Read first, write only what the claim decided (see Engine.write_if_needed): an empty
        # claim never takes the write lock.
        return self._engine.write_if_needed(lambda conn: claimpolicy.claim_after_policies(
            self.sql, conn, params, partial(claim.claim_jobs, self.sql, params=params)))

    def job_finish(self, params: JobFinish) -> bool:
        return self._engine.write(partial(claim.finish_job, self.sql, params=params))

    def job_finish_many(self, params: Sequence[JobFinish]) -> list[bool]:
        return self._engine.write(partial(claim.finish_jobs, self.sql, batch=params))

    def read_usage(
        self, conn: Any, active: Sequence[Control], keys: Sequence[str] = (), depth: int = 1
    ) -> ControlUsage:
        return controls.read_usage(conn, active, keys, depth)

    def lease_renew(
        self, worker_id: str, now: datetime, ttl: float, leases: Sequence[LeaseRenewal]
    ) -> dict[int, RenewResult]:
        if not leases:
            return {}
        return self._engine.write(
            lambda conn: claim.renew_leases(conn, worker_id, now, ttl, leases)
        )

    def leader_elect(self, worker_id: str, now: datetime, ttl: float) -> LeaderState:
        return self._engine.write(lambda conn: claim.elect_leader(conn, worker_id, now, ttl))

    # transactions and wake-ups ----------------------------------------------------------------

    @contextlib.contextmanager
    def fenced_transaction(self, job_id: int, fence: int, now: datetime) -> Iterator[Any]:
        """A write transaction that first checks the fence; SQLite's write lock, held until
        commit, keeps the fence current for the rest of it."""
        with self._engine.transaction() as conn:
            live = self.sql.joined(conn, partial(jobs.fence_live, self.sql, job_id=job_id,
                                                  fence=fence, now=now))
            if not live:
                raise FenceRejected(job_id, fence)
            yield conn

    def wait_for_work(self, timeout: float) -> bool:
        return self._engine.wait_for_change(timeout)

    def notify_work(self, queue: str) -> None:
        """Nothing to do: any commit is visible to waiting workers through ``data_version``."""
