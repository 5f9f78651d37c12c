"""Per-process Prometheus metrics after a known workload run by a real in-process worker, scraped
over HTTP and parsed with prometheus-client's own parser; and the fleet's lease takeovers and
fence rejections, which only the store can count, on every store."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

import oncely
from oncely.errors import FenceRejected
from oncely.observe.fleet import fleet_registry
from oncely.observe.metrics import serve_process_metrics
from oncely.store.params import JobClaimParams, JobFilter, JobInsert
from oncely.testing import wait_until, worker_running
from oncely.types import JobState
from oncely.worker.context import JobContext

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def app(any_url: str) -> Iterator[oncely.App]:
    app = oncely.App(any_url, settings=oncely.Settings(poll_interval=0.05, enqueue_interval=0.05))
    yield app
    app.close()


def test_worker_metrics_count_a_known_workload(app: oncely.App) -> None:
    @app.task(name="ok", queue="fast")
    def ok(ctx: oncely.JobContext) -> str:
        return "done"

    @app.task(name="boom", queue="fast", retry=oncely.RetryPolicy(attempts=2, base_delay=0.0))
    def boom(ctx: oncely.JobContext) -> None:
        raise RuntimeError("always")

    metrics, server = serve_process_metrics(app.events, 0)
    try:
        for _ in range(3):
            app.enqueue(ok)
        app.enqueue(boom)
        with worker_running(app, concurrency=2, maintenance=False):
            def finished() -> bool:
                states = [j.state for j in app.store.job_list(JobFilter())]
                return states.count(JobState.SUCCEEDED) == 3 and JobState.FAILED in states

            wait_until(finished, timeout=20)
            url = f"http://127.0.0.1:{server.server_port}/metrics"
            wait_until(lambda: "oncely_jobs_total" in urllib.request.urlopen(url).read().decode())
            samples = parse(urllib.request.urlopen(url, timeout=5).read().decode())
    finally:
        server.shutdown()
    assert value(samples, "oncely_jobs_total", queue="fast", task="ok", outcome="succeeded") == 3
    assert value(samples, "oncely_jobs_total", queue="fast", task="boom", outcome="retryable") == 1
    assert value(samples, "oncely_jobs_total", queue="fast", task="boom", outcome="failed") == 1
    assert value(samples, "oncely_jobs_claimed_total", queue="fast", task="ok") == 3
    assert value(samples, "oncely_jobs_claimed_total", queue="fast", task="boom") == 2
    assert value(samples, "oncely_job_duration_seconds_count", queue="fast", task="ok") == 3
    assert value(samples, "oncely_job_duration_seconds_count", queue="fast", task="boom") == 2
    assert value(samples, "oncely_job_wait_seconds_count", queue="fast", task="ok") == 3
    assert value(samples, "oncely_jobs_enqueued_total", task="ok") == 3
    assert value(samples, "oncely_events_total", event="job.started") == 5
    assert value(samples, "oncely_worker_running_jobs") == 0
    assert value(samples, "oncely_store_up") == 1
    assert metrics.registry is not None


def test_takeovers_and_fence_rejections_are_counted_fleet_wide(any_url: str) -> None:
    clock = oncely.FrozenClock("2026-03-02T09:00:00+00:00")
    app = oncely.App(any_url, clock=clock)
    for _ in range(2):
        app.store.job_insert(JobInsert(task="t", singleton_key="k"), clock.now())
    [zombie] = app.store.job_claim(JobClaimParams("w1", clock.now(), 1, 10.0)).jobs
    clock.advance(11)  # w1 freezes past its lease; w2 takes the key over
    app.store.job_claim(JobClaimParams("w2", clock.now(), 1, 10.0))
    with pytest.raises(FenceRejected):
        JobContext(app.runtime, zombie, "w1").check_fence()  # the zombie wakes and tries to write

    samples = parse(generate(app))
    assert value(samples, "oncely_lease_takeovers", window="1h") == 1
    assert value(samples, "oncely_fence_rejections", window="1h") == 1
    assert value(samples, "oncely_queue_jobs", queue="default", state="running") == 2
    assert value(samples, "oncely_queue_running_jobs", queue="default") == 2
    clock.advance(3601)
    samples = parse(generate(app))
    assert value(samples, "oncely_lease_takeovers", window="1h") == 0
    app.close()


def generate(app: oncely.App) -> str:
    from prometheus_client import generate_latest

    return generate_latest(fleet_registry(lambda: app.store, app.clock.now)).decode()
