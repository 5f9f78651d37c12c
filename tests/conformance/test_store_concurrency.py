"""Conformance: claims racing from many threads (and, on SQLite, many processes) hand every job to
exactly one claimer, and a singleton key to one job at a time."""

from __future__ import annotations

import multiprocessing
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _claim_race import claim_until_empty

from oncely.clock import FrozenClock
from oncely.store import open_store
from oncely.store.base import Store
from oncely.store.params import JobClaimParams, JobFinish, JobInsert
from oncely.types import Job, JobState

if TYPE_CHECKING:
    from conftest import Kit


def race_threads(store: Store, clock: FrozenClock, workers: int) -> dict[str, list[Job]]:
    """Each thread claims (random batch sizes) and finishes until its claim comes back empty."""
    barrier = threading.Barrier(workers)
    claimed: dict[str, list[Job]] = {f"t{i}": [] for i in range(workers)}
    failures: list[BaseException] = []

    def work(worker_id: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait(30)
            while True:
                params = JobClaimParams(worker_id, clock.now(), rng.randint(1, 8), 600.0)
                jobs = store.job_claim(params).jobs
                if not jobs:
                    return
                claimed[worker_id].extend(jobs)
                for job in jobs:
                    finish = JobFinish(job.id, job.fence, clock.now(), JobState.SUCCEEDED)
                    if not store.job_finish(finish):
                        raise AssertionError(f"finish of job {job.id} was refused")
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=work, args=(worker_id, index), daemon=True)
        for index, worker_id in enumerate(claimed)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a claiming thread hung"
    assert failures == []
    return claimed


def test_threads_claim_each_job_exactly_once(kit: Kit) -> None:
    params = [JobInsert(task="race", args={"i": i}, priority=i % 3) for i in range(500)]
    inserted = [r.job.id for r in kit.store.job_insert_many(params, kit.now())]
    claimed = race_threads(kit.store, kit.clock, workers=4)
    ids = [job.id for jobs in claimed.values() for job in jobs]
    assert len(ids) == len(set(ids)) == 500
    assert sorted(ids) == sorted(inserted)
    assert all(kit.get(job_id).state == JobState.SUCCEEDED for job_id in inserted[::50])


def test_threads_share_a_singleton_key_one_at_a_time(kit: Kit) -> None:
    params = [JobInsert(task="solo", singleton_key="solo") for _ in range(40)]
    inserted = [r.job.id for r in kit.store.job_insert_many(params, kit.now())]
    claimed = race_threads(kit.store, kit.clock, workers=4)
    jobs = [job for batch in claimed.values() for job in batch]
    assert sorted(job.id for job in jobs) == sorted(inserted)
    fences = sorted(job.fence for job in jobs)
    assert fences == list(range(fences[0], fences[0] + 40)), "every grant adds one to the fence"


@pytest.mark.parametrize("singleton", [False, True], ids=["plain", "singleton"])
def test_processes_claim_each_job_exactly_once_on_sqlite(
    tmp_path: Path, clock: FrozenClock, singleton: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    store = open_store(url)
    store.migrate()
    count = 60 if singleton else 500
    key = "solo" if singleton else None
    params = [JobInsert(task="race", args={"i": i}, singleton_key=key) for i in range(count)]
    inserted = [r.job.id for r in store.job_insert_many(params, clock.now())]
    store.close()

    ctx = multiprocessing.get_context("spawn")
    processes = 3
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=claim_until_empty,
            args=(url, f"p{i}", clock.now().isoformat(), barrier, results),
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert [error for _, _, error in reports if error] == []

    claimed = [pair for _, pairs, _ in reports for pair in pairs]
    ids = [job_id for job_id, _ in claimed]
    assert len(ids) == len(set(ids)) == count
    assert sorted(ids) == sorted(inserted)
    if singleton:
        fences = sorted(fence for _, fence in claimed)
        assert fences == list(range(fences[0], fences[0] + count))
