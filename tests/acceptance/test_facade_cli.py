"""The command line and the dashboard act through the App's facade, on every store: the same
calls, the same events, with who asked."""

from __future__ import annotations

import getpass
import hashlib
import socket
import warnings
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from tests.apps import recorded

import oncely
from oncely.cli import cli
from oncely.web.app import create_app

with warnings.catch_warnings():  # Starlette asks for httpx2; httpx serves the test client fine
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

TOKEN = "tok-facade-5d1e9b"
# Who the command line says acted (user@host), and the dashboard (which token).
CLI_BY = f"{getpass.getuser()}@{socket.gethostname()}"
DASHBOARD_BY = f"dashboard:{hashlib.sha256(TOKEN.encode()).hexdigest()[:8]}"


@pytest.fixture
def app(any_url: str) -> Iterator[oncely.App]:
    recorded.EVENTS.clear()
    app = recorded.make()
    app.settings = app.settings.with_(database_url=any_url)
    app.migrate()  # the commands below only read and operate: they create no schema
    yield app
    app.close()


def run(app: oncely.App, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--app", "tests.apps.recorded:make", "--database-url",
                                      app.url, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def named(name: str) -> list[dict[str, object]]:
    return [fields for event, fields in recorded.EVENTS if event == name]


def test_jobs_retry_and_cancel_on_the_command_line_emit_their_events(app: oncely.App) -> None:
    failed = app.run_now("chore", fail=True)
    assert "is available" in run(app, "jobs", "retry", str(failed.id))
    assert named("job.retry_requested")[-1] == {"job_id": failed.id, "task": "chore",
                                                "by": CLI_BY}
    assert "is cancelled" in run(app, "jobs", "cancel", str(failed.id), "--reason", "enough")
    assert named("job.cancel_requested")[-1] == {"job_id": failed.id, "task": "chore",
                                                 "running": False, "reason": "enough",
                                                 "by": CLI_BY}
    again = app.run_now("chore", fail=True)
    assert "retried 1 failed job(s)" in run(app, "jobs", "retry", "--all")
    assert named("job.dead_letters_retried")[-1]["retried"] == 1
    assert app.read.job(again.id).state == oncely.JobState.AVAILABLE


def test_queues_pause_and_resume_on_the_command_line_emit_their_events(app: oncely.App) -> None:
    assert "queue default paused" in run(app, "queues", "pause", "default")
    assert named("queue.paused") == [{"queue": "default", "reason": None, "by": CLI_BY}]
    assert "queue default resumed" in run(app, "queues", "resume", "default")
    assert named("queue.resumed") == [{"queue": "default", "by": CLI_BY}]


def test_the_dashboard_retries_and_cancels_through_the_facade(app: oncely.App) -> None:
    failed = app.run_now("chore", fail=True)
    web = TestClient(create_app(app, TOKEN), base_url="http://127.0.0.1:8700")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    answer = web.post(f"/api/jobs/{failed.id}/retry", headers=bearer)
    assert answer.status_code == 200 and answer.json()["state"] == "available"
    assert named("job.retry_requested") == [{"job_id": failed.id, "task": "chore",
                                             "by": DASHBOARD_BY}]
    answer = web.post(f"/api/jobs/{failed.id}/cancel", headers=bearer)
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    [cancel] = named("job.cancel_requested")
    assert (cancel["by"], cancel["running"]) == (DASHBOARD_BY, False)


def test_resolving_an_anomaly_by_hand_says_who_did(any_url: str) -> None:
    from tests.observe_data import START, billing_app, incident

    app = billing_app(any_url, oncely.FrozenClock(START))
    try:
        app.register_schedules()
        incident(app, workers=6)
        [raised] = app.run_watchdog().raised
        seen: list[dict[str, object]] = []
        app.events.subscribe(lambda event: seen.append(dict(event.fields))
                             if event.name == "anomaly.resolved" else None)
        app.resolve_anomaly(raised.id, by="ops")
        assert seen == [{"anomaly_id": raised.id, "kind": str(raised.kind),
                         "subject": raised.subject, "schedule": raised.schedule, "by": "ops"}]
        with pytest.raises(oncely.NotFound):
            app.resolve_anomaly(raised.id)
    finally:
        app.close()
