"""Wake-ups of idle claimers when finishes free room in a limited queue or task, or a
singleton key, for the PostgreSQL store (SQLite's claimers notice any commit by themselves)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg

from oncely.store.base import JobFinish
from oncely.store.postgres import claim
from oncely.store.postgres.dialect import fetch


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
