"""A claiming worker for the multi-process race in test_store_concurrency (spawn needs it in an
importable module, not in a test body)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from oncely.store import open_store
from oncely.store.params import JobClaimParams, JobFinish
from oncely.types import JobState


def claim_until_empty(url: str, worker_id: str, now_iso: str, barrier: Any, results: Any) -> None:
    """Claim and finish jobs until a claim comes back empty; report (worker, [(id, fence)])."""
    store = open_store(url)
    now = datetime.fromisoformat(now_iso)
    claimed: list[tuple[int, int]] = []
    try:
        barrier.wait(60)
        while True:
            jobs = store.job_claim(JobClaimParams(worker_id, now, 5, 600.0)).jobs
            if not jobs:
                break
            for job in jobs:
                claimed.append((job.id, job.fence))
                finish = JobFinish(job.id, job.fence, now, JobState.SUCCEEDED)
                if not store.job_finish(finish):
                    raise AssertionError(f"{worker_id}: finish of job {job.id} was refused")
        results.put((worker_id, claimed, None))
    except BaseException as exc:  # the parent reports it
        results.put((worker_id, claimed, repr(exc)))
    finally:
        store.close()
