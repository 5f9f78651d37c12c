"""`oncely doctor` against stores prepared with the incident's pattern (six workers each enqueue an
immediate run beside the hourly schedule, every run retried five times) and with a healthy
fleet: findings with evidence and advice, exit codes 1 and 0, and --json."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from tests.conftest import ROOT
from tests.observe_data import SCHEDULE, START, billing_app, healthy_hours, incident

import oncely
from oncely.observe.doctor import examine, render_text
from oncely.store.params import JobClaimParams, WorkerInfo


@pytest.fixture
def app(any_url: str) -> Iterator[oncely.App]:
    app = billing_app(any_url, oncely.FrozenClock(START))
    app.register_schedules()
    yield app
    app.close()


def live_worker(app: oncely.App, worker_id: str = "w1") -> None:
    now = app.clock.now()
    app.store.worker_register(WorkerInfo(worker_id, "host-a", 4242, None, 2, now))
    app.store.leader_elect(worker_id, now, 15.0)


def doctor(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oncely", "--database-url", url, "doctor", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_incident_pattern_is_diagnosed_with_evidence_and_advice(app: oncely.App) -> None:
    incident(app, workers=6)
    live_worker(app)
    report = examine(app)
    assert not report.healthy and report.exit_code == 1
    [storm] = [f for f in report.findings if f.check == f"schedule:{SCHEDULE}"]
    assert storm.severity == "problem"
    assert storm.summary == (f"schedule {SCHEDULE}: 31.0x expected in the last hour "
                             "(31 executions, 1 expected)")
    assert "non_slot: 6" in storm.evidence and "retries: 24" in storm.evidence
    assert "6 came from enqueues of billing.thresholds not tied to a slot by 6 workers" in (
        storm.advice)
    assert f"app.trigger('{SCHEDULE}')" in storm.advice
    dead = [f for f in report.findings if f.check == "dead letters"]
    assert dead and dead[0].summary == "6 failed jobs kept"
    text = render_text(report)
    assert text.splitlines()[0].startswith("PROBLEM  schedule free-tier-thresholds: 31.0x")
    assert text.endswith(f"oncely doctor: problems found ({report.checked_at.isoformat()})")


def test_a_healthy_fleet_is_healthy(app: oncely.App) -> None:
    healthy_hours(app, 12)
    live_worker(app)
    report = examine(app)
    assert report.healthy and report.exit_code == 0
    assert [(f.severity, f.summary) for f in report.findings] == [("ok", "no problem found")]


def test_fleet_problems_nobody_rescues_and_no_worker(app: oncely.App) -> None:
    app.enqueue("emails.send", to="x@example.com")
    report = examine(app)
    assert [f.summary for f in report.findings if f.check == "workers"] == ["no live worker"]
    app.store.job_claim(JobClaimParams("gone", app.clock.now(), 1, 30.0))
    app.clock.advance(timedelta(minutes=10))
    live_worker(app, "w2")
    report = examine(app)
    [rescue] = [f for f in report.findings if f.check == "rescue"]
    assert rescue.severity == "problem" and "nobody rescued them" in rescue.summary


def test_the_command_exits_1_with_json_and_0_when_healthy(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'incident.db'}"
    app = billing_app(url, oncely.FrozenClock(START))
    app.register_schedules()
    incident(app, workers=6)
    app.close()
    # The doctor runs on the real clock, long after the storm: the 10-period window is empty, but
    # the dead letters and the missing workers are still there to report.
    found = doctor(url, "--json")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert report["healthy"] is False
    assert {f["check"] for f in report["findings"]} >= {"workers", "dead letters"}
    text = doctor(url)
    assert text.returncode == 1 and "no live worker" in text.stdout

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    missing = doctor(empty)  # the doctor creates no database where none is
    assert missing.returncode == 4 and "does not exist" in missing.stderr
    assert not (tmp_path / "empty.db").exists()
    fresh = oncely.App(empty)
    fresh.migrate()
    fresh.close()
    ok = doctor(empty)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no problem found" in ok.stdout and "healthy" in ok.stdout.splitlines()[-1]


def test_a_handler_wedged_past_its_timeout_is_a_problem(any_url: str) -> None:
    """A handler thread that ignores its timeout keeps its job running (its worker renews the
    lease until the code stops): the doctor must not call that healthy."""
    app = oncely.App(any_url, clock=oncely.FrozenClock(START))

    @app.task(name="wedged", timeout=5)
    def wedged(ctx: oncely.JobContext) -> None: ...

    try:
        handle = wedged.enqueue()
        live_worker(app)
        app.store.job_claim(JobClaimParams("w1", app.clock.now(), 1, 120.0))
        app.clock.advance(timedelta(seconds=60))
        live_worker(app)  # still alive, still renewing
        report = examine(app)
    finally:
        app.close()
    assert not report.healthy
    [wedge] = [f for f in report.findings if f.check == f"job:{handle.id}"]
    assert wedge.summary == (f"job {handle.id} (wedged) has run 55s past its timeout of 5s: its "
                             "handler ignores the request to stop, and worker w1 keeps the job "
                             "(and its singleton key) until the code returns")
    assert 'isolation="process"' in wedge.advice
