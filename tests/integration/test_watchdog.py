"""The watchdog's decisions with a frozen clock, on every store: a healthy fleet raises nothing; a
duplicate storm, missed slots, a stuck lease and queue pressure each raise their anomaly, which
is stored once, logged as an event, POSTed to a webhook, and resolved when the condition clears."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from tests.observe_data import (
    SCHEDULE,
    START,
    TASK,
    billing_app,
    healthy_hours,
    incident,
    next_slot,
    work,
)

import oncely
from oncely.lifecycle import JobEvent
from oncely.maintenance.enqueuer import SlotEnqueuer
from oncely.maintenance.watchdog import Watchdog
from oncely.observe.notify import WebhookNotifier
from oncely.store.observability import AnomalyKind, ExecutionWindow
from oncely.store.params import JobClaimParams, JobFilter, JobInsert, LeaseRenewal
from oncely.types import JobState, SlotOutcome
from oncely.worker.execute import Outcome


@pytest.fixture
def clock() -> oncely.FrozenClock:
    return oncely.FrozenClock(START)


@pytest.fixture
def app(any_url: str, clock: oncely.FrozenClock) -> Iterator[oncely.App]:
    app = billing_app(any_url, clock)
    app.register_schedules()
    yield app
    app.close()


def kinds(result) -> list[tuple[str, str]]:
    return [(str(f.kind), f.subject) for f in result.findings]


def test_a_healthy_fleet_raises_nothing(app: oncely.App) -> None:
    healthy_hours(app, 12)
    app.enqueue("emails.send", to="a@example.com")  # other work does not disturb the schedule
    work(app)
    result = Watchdog(app.runtime).run_once()
    assert result.findings == [] and result.healthy
    assert app.store.anomaly_list(open_only=False) == []


def test_a_duplicate_storm_is_too_many_with_its_evidence(app: oncely.App) -> None:
    seen: list[oncely.observe.events.Event] = []
    app.events.subscribe(seen.append)
    incident(app, workers=6)
    result = Watchdog(app.runtime).run_once()
    assert kinds(result) == [("too_many", f"schedule:{SCHEDULE}")]
    [anomaly] = result.raised
    assert anomaly.summary == (f"schedule {SCHEDULE}: 31.0x expected in the last hour "
                               "(31 executions, 1 expected)")
    assert anomaly.severity == "critical" and anomaly.ratio == pytest.approx(31.0)
    evidence = anomaly.evidence
    assert (evidence["slot_runs"], evidence["non_slot"], evidence["retries"]) == (1, 6, 24)
    assert evidence["non_slot_workers"] == 6
    assert "6 came from enqueues of billing.thresholds not tied to a slot by 6 workers" in (
        anomaly.advice)
    assert "24 were retries" in anomaly.advice
    raised = [e for e in seen if e.name == "anomaly.raised"]
    assert [e.fields["kind"] for e in raised] == ["too_many"]

    app.clock.advance(60)
    again = Watchdog(app.runtime).run_once()
    assert again.raised == [] and [a.id for a in again.updated] == [anomaly.id]
    assert app.store.anomaly_get(anomaly.id).occurrences == 2

    healthy_hours(app, 11)
    calm = Watchdog(app.runtime).run_once()
    assert calm.findings == [] and [a.id for a in calm.resolved] == [anomaly.id]
    assert app.store.anomaly_list() == []


def test_a_handed_back_attempt_and_its_rerun_are_one_run(app: oncely.App) -> None:
    # A worker hands back a prefetched slot job no thread began (or releases it at shutdown):
    # the attempt is refunded and another worker runs the slot. Twice in one hour, so a count
    # of attempts would raise too_many (4 executions where 1 is expected).
    enqueuer = SlotEnqueuer(app.runtime)
    next_slot(app)
    enqueuer.run_once()
    for holder in ("w1", "w2"):
        (job,) = app.store.job_claim(JobClaimParams(holder, app.clock.now(), 1, 60.0)).jobs
        now = app.clock.now()
        app.store.job_finish(Outcome.of(JobEvent.RELEASE, retry_at=job.run_at).finish(job, now))
    work(app, "w3", run_seconds=30)
    [count] = app.store.execution_counts(
        ExecutionWindow(app.clock.now() - timedelta(hours=1), app.clock.now(), task=TASK))
    assert (count.executions, count.lost) == (3, 2)
    assert Watchdog(app.runtime).run_once().findings == []
    (job,) = app.store.job_list(JobFilter(task=TASK))
    assert job.state == JobState.SUCCEEDED and job.attempt == 1


def test_the_apps_watchdog_thresholds_decide(app: oncely.App) -> None:
    incident(app, workers=6)  # 31 executions where 1 was expected
    app.watchdog = oncely.WatchdogConfig(too_many_ratio=40.0, min_excess=40)
    assert Watchdog(app.runtime).run_once().findings == []
    app.watchdog = oncely.WatchdogConfig(too_many_ratio=20.0)
    assert kinds(Watchdog(app.runtime).run_once()) == [("too_many", f"schedule:{SCHEDULE}")]
    with pytest.raises(ValueError, match="too_many_ratio"):
        oncely.WatchdogConfig(too_many_ratio=1.0)


def test_overlapping_runs_are_named_in_the_evidence(app: oncely.App) -> None:
    # Four runs of the task at once, as on a queue with no mutual exclusion across workers
    # (oncely's own enqueue would give them the schedule's singleton key).
    for _ in range(4):
        app.store.job_insert(JobInsert(TASK, queue="billing"), app.clock.now())
    work(app, "w1", limit=4)
    [finding] = Watchdog(app.runtime).run_once().findings
    assert finding.evidence["overlaps"] == 3
    assert "3 started while another run was still running" in finding.advice


def test_a_stopped_scheduler_is_too_few_with_slots_never_recorded(app: oncely.App) -> None:
    healthy_hours(app, 3)
    app.clock.advance(timedelta(hours=5))  # nobody runs the enqueuer any more
    [finding] = Watchdog(app.runtime).run_once().findings
    assert (finding.kind, finding.severity) == (AnomalyKind.TOO_FEW, "critical")
    # 03:35 to 06:35 never recorded; 07:35 is younger than the settle time and not counted yet
    assert finding.evidence["never_recorded"] == 4 and finding.evidence["ran"] == 3
    assert finding.summary == f"schedule {SCHEDULE}: 3 of 7 slots ran in the last 10h"
    assert "the scheduler stopped" in finding.advice


def test_missed_slots_after_an_outage_are_too_few(app: oncely.App) -> None:
    healthy_hours(app, 2)
    app.clock.advance(timedelta(hours=4))
    SlotEnqueuer(app.runtime).run_once()  # catch_up=latest: the newest missed slot runs
    work(app)
    outcomes = [r.outcome for r in app.store.ledger_list(SCHEDULE)]
    assert outcomes.count(SlotOutcome.COALESCED) == 3
    [finding] = Watchdog(app.runtime).run_once().findings
    assert finding.kind == AnomalyKind.TOO_FEW and finding.severity == "warning"
    assert finding.evidence["coalesced"] == 3 and finding.evidence["never_recorded"] == 0
    assert "3 missed or coalesced" in finding.advice


def test_a_lease_renewed_far_past_the_usual_duration_is_stuck(app: oncely.App) -> None:
    healthy_hours(app, 4)  # four runs of 30 s: the usual duration
    app.clock.set(app.clock.now().replace(minute=35) + timedelta(hours=1))
    SlotEnqueuer(app.runtime).run_once()
    [job] = app.store.job_claim(JobClaimParams("w-hung", app.clock.now(), 1, 60.0)).jobs
    for _ in range(10):  # the keeper keeps renewing while the handler never returns
        app.clock.advance(30)
        app.store.lease_renew("w-hung", app.clock.now(), 60.0, [LeaseRenewal(job.id, job.fence)])
    result = Watchdog(app.runtime).run_once()
    assert kinds(result) == [("stuck", f"job:{job.id}")]
    [finding] = result.findings
    assert finding.summary == (f"job {job.id} ({TASK}) has been running 5m, 10x its usual 30s; "
                               "worker w-hung still renews its lease")
    assert f"oncely jobs cancel {job.id}" in finding.advice


def test_jobs_waiting_longer_than_the_period_are_pressure(app: oncely.App) -> None:
    healthy_hours(app, 2)
    enqueuer = SlotEnqueuer(app.runtime)
    for _ in range(2):  # slots are enqueued, but no worker serves the billing queue
        app.clock.advance(timedelta(hours=1))
        enqueuer.run_once()
    app.clock.advance(timedelta(minutes=10))
    result = Watchdog(app.runtime).run_once()
    assert kinds(result) == [("pressure", f"schedule:{SCHEDULE}")]
    [finding] = result.findings
    assert finding.evidence["waiting"] == 2 and finding.evidence["queues"] == ["billing"]
    assert "waiting, the oldest for 1h10m, longer than the period (1h)" in finding.summary
    assert "no live worker serves queue billing" in finding.advice


class _Hook(BaseHTTPRequestHandler):
    bodies: list[dict] = []
    statuses: list[int] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"bodies": [], "statuses": [503, 500]})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", handler
    server.shutdown()


def test_new_and_resolved_anomalies_are_posted_with_retries(app: oncely.App, hook) -> None:
    url, handler = hook
    seen: list = []
    app.events.subscribe(seen.append)
    sleeps: list[float] = []
    notifier = WebhookNotifier(url, background=False, emit=app.events.emit, sleep=sleeps.append,
                               backoff=0.5)
    incident(app, workers=3)
    Watchdog(app.runtime, notifier=notifier).run_once()
    assert sleeps == [0.5, 1.0]  # two failures, then delivered
    [body] = handler.bodies[2:]
    assert handler.bodies[0] == body and body["event"] == "anomaly.raised"
    assert body["anomaly"]["kind"] == "too_many" and "16.0x expected" in body["text"]
    delivered = [e for e in seen if e.name == "anomaly.notified"]
    assert delivered[0].fields["attempts"] == 3

    Watchdog(app.runtime, notifier=notifier).run_once()  # still open: no second notification
    assert len(handler.bodies) == 3
    healthy_hours(app, 11)
    Watchdog(app.runtime, notifier=notifier).run_once()
    assert handler.bodies[-1]["event"] == "anomaly.resolved"
    assert handler.bodies[-1]["anomaly"]["resolved_at"] is not None


def test_a_receiver_that_refuses_is_not_retried(app: oncely.App, hook) -> None:
    url, handler = hook
    handler.statuses[:] = [400]
    seen: list = []
    notifier = WebhookNotifier(url, background=False, emit=lambda n, **f: seen.append((n, f)),
                               sleep=lambda s: None)
    incident(app, workers=2)
    Watchdog(app.runtime, notifier=notifier).run_once()
    assert len(handler.bodies) == 1
    assert seen[0][0] == "anomaly.notify_failed" and seen[0][1]["status"] == 400


def test_lease_takeovers_recorded_by_the_store_become_events(app: oncely.App) -> None:
    seen: list = []
    app.events.subscribe(seen.append)
    watchdog = Watchdog(app.runtime)
    watchdog.run_once()
    store, clock = app.store, app.clock
    for _ in range(2):  # one singleton key for both
        store.job_insert(JobInsert("digest", singleton_key="digest"), clock.now())
    store.job_claim(JobClaimParams("w-frozen", clock.now(), 10, 10.0))
    clock.advance(11)
    store.job_claim(JobClaimParams("w-alive", clock.now(), 10, 10.0))
    watchdog.run_once()
    [event] = [e for e in seen if e.name == "lease.taken_over"]
    assert (event.fields["key"], event.fields["previous_owner"], event.fields["owner"]) == (
        "digest", "w-frozen", "w-alive")
    watchdog.run_once()
    assert len([e for e in seen if e.name == "lease.taken_over"]) == 1
