"""The conformance suite: the same test bodies run against every store.

``store`` is parametrised over SQLite (a fresh, migrated file per test) and PostgreSQL (a fresh
schema per test in the database named by ``ONCELY_TEST_POSTGRES_URL``, dropped afterwards). Without
that variable the PostgreSQL cases skip; with it, an unreachable server fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from oncely.clock import FrozenClock
from oncely.store import open_store
from oncely.store.base import Store
from oncely.store.params import (
    ClaimResult,
    JobClaimParams,
    JobFinish,
    JobInsert,
    SlotEnqueue,
    SlotResult,
)
from oncely.types import ErrorKind, Job, JobError, JobState, Overlap

POSTGRES_ENV = "ONCELY_TEST_POSTGRES_URL"
START = "2026-03-02T09:00:00+00:00"


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to (or replacing those in) its query string."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'oncely.db'}")
    store.migrate()
    try:
        yield store
    finally:
        store.close()


def _postgres_store() -> Iterator[Store]:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} not set")
    # From here on every problem is a failure: the variable says a server should be there.
    import psycopg

    from oncely.store.postgres import PostgresStore

    schema = f"oncely_t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    store = PostgresStore(with_query(url, schema=schema))
    try:
        store.migrate()
        yield store
    finally:
        store.close()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield from _sqlite_store(tmp_path)
    else:
        yield from _postgres_store()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@dataclass
class Kit:
    """Short spellings of the store calls the tests make over and over."""

    store: Store
    clock: FrozenClock
    ttl: float = 30.0

    def now(self) -> datetime:
        return self.clock.now()

    def later(self, seconds: float) -> datetime:
        return self.clock.now() + timedelta(seconds=seconds)

    def insert(self, task: str = "task", **fields: Any) -> Job:
        return self.store.job_insert(JobInsert(task=task, **fields), self.now()).job

    def get(self, job_id: int) -> Job:
        job = self.store.job_get(job_id)
        assert job is not None, f"job {job_id} is gone"
        return job

    def claim(
        self,
        worker: str = "w1",
        limit: int = 10,
        queues: tuple[str, ...] | None = None,
        ttl: float | None = None,
    ) -> ClaimResult:
        params = JobClaimParams(worker, self.now(), limit, ttl or self.ttl, queues)
        return self.store.job_claim(params)

    def claim_one(self, worker: str = "w1", **options: Any) -> Job:
        jobs = self.claim(worker, limit=1, **options).jobs
        assert len(jobs) == 1, f"expected one claimed job, got {jobs}"
        return jobs[0]

    def finish(self, job: Job, state: JobState = JobState.SUCCEEDED, **fields: Any) -> bool:
        return self.store.job_finish(JobFinish(job.id, job.fence, self.now(), state, **fields))

    def error(self, job: Job, kind: ErrorKind = ErrorKind.ERROR, message: str = "boom") -> JobError:
        return JobError(attempt=job.attempt, at=self.now(), kind=kind, message=message)

    def slot(
        self,
        schedule: str,
        slot: datetime,
        key: str | None = None,
        overlap: Overlap = Overlap.SKIP,
        **fields: Any,
    ) -> SlotResult:
        job = JobInsert(
            task=f"{schedule}-task", run_at=slot, singleton_key=key, overlap=overlap, **fields
        )
        return self.store.slot_enqueue(SlotEnqueue(schedule, slot, self.now(), job=job))


@pytest.fixture
def kit(store: Store, clock: FrozenClock) -> Kit:
    return Kit(store, clock)
