"""The dashboard over HTTP (Starlette's test client), on every store: pages and the JSON API read
real data; actions need the token, a session and a CSRF token; no secret is ever rendered; the
fleet's /metrics parse with prometheus-client's own parser."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.observe_data import SCHEDULE, START, billing_app, incident, work

import oncely
from oncely.maintenance.watchdog import Watchdog
from oncely.store.params import JobFilter
from oncely.types import JobState
from oncely.web.app import create_app

with warnings.catch_warnings():  # Starlette asks for httpx2; httpx serves the test client fine
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

TOKEN = "tok-9f2c41d7e8a6b5"
PAGES = ["/", "/jobs", "/jobs?state=failed", "/schedules", f"/schedules/{SCHEDULE}", "/workers",
         "/anomalies", "/login"]


@pytest.fixture
def app(any_url: str) -> Iterator[oncely.App]:
    app = billing_app(any_url, oncely.FrozenClock(START))
    app.register_schedules()
    incident(app, workers=6)
    app.enqueue("emails.send", to="ops@example.com", api_key="sk_live_abcdef123456")
    Watchdog(app.runtime).run_once()
    yield app
    app.close()


def client(app: oncely.App, token: str | None = None) -> TestClient:
    return TestClient(create_app(app, token), base_url="http://127.0.0.1:8700")


def failed_job(app: oncely.App) -> int:
    return app.store.job_list(JobFilter(state=JobState.FAILED, limit=1))[0].id


def sign_in(web: TestClient) -> str:
    response = web.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert response.status_code == 303
    page = web.get("/jobs").text
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_every_page_renders_real_data(app: oncely.App) -> None:
    web = client(app)
    for path in PAGES:
        response = web.get(path)
        assert response.status_code == 200, path
        assert response.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in response.headers["content-security-policy"]
    overview = web.get("/").text
    assert f"schedule {SCHEDULE}: 31.0x expected in the last hour" in overview
    assert ">billing</a>" in overview
    schedule = web.get(f"/schedules/{SCHEDULE}").text
    assert '<svg class="timeline"' in schedule and 'data-actual="31"' in schedule
    assert 'data-expected="1"' in schedule
    job = web.get(f"/jobs/{failed_job(app)}").text
    assert "analytics query timed out after 120 s" in job and "read-only" in job
    assert web.get("/jobs/999999").status_code == 404
    assert web.get("/schedules/nope").status_code == 404


def test_the_json_api_and_its_openapi_document(app: oncely.App) -> None:
    web = client(app)
    spec = web.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in spec["paths"]:
        if "{" not in path and path.startswith("/api/") and "retry" not in path:
            assert web.get(path).status_code == 200, path
    assert spec["paths"]["/api/jobs/{job_id}/retry"]["post"]["security"] == [{"bearer": []}]
    overview = web.get("/api/overview").json()
    assert overview["dead_letters"] == 6 and overview["anomalies_open"] == 1
    [rate] = web.get("/api/schedules/rates").json()
    assert (rate["observed"], rate["expected"], rate["non_slot"]) == (31, 1, 6)
    timeline = web.get(f"/api/schedules/{SCHEDULE}/timeline").json()
    assert sum(b["actual"] for b in timeline["buckets"]) == 31
    failed = web.get("/api/jobs", params={"state": "failed"}).json()
    assert len(failed) == 6
    detail = web.get(f"/api/jobs/{failed[0]['id']}").json()
    assert len(detail["errors"]) == 5 and len(detail["attempts"]) == 5
    assert web.get("/api/jobs", params={"state": "bogus"}).status_code == 400
    assert web.get("/api/doctor").json()["healthy"] is False


def test_a_dashboard_without_token_refuses_every_action(app: oncely.App) -> None:
    web = client(app)
    job_id = failed_job(app)
    assert web.post(f"/jobs/{job_id}/retry", data={"csrf": "x"}).status_code == 403
    assert web.post(f"/api/jobs/{job_id}/retry").status_code == 403
    assert web.post("/login", data={"token": ""}).status_code == 403
    assert app.store.job_get(job_id).state == JobState.FAILED


def test_actions_need_the_session_the_csrf_token_and_the_same_origin(app: oncely.App) -> None:
    web = client(app, TOKEN)
    job_id = failed_job(app)
    assert web.post("/login", data={"token": "wrong"}).status_code == 403
    assert web.post(f"/jobs/{job_id}/retry", data={}).status_code == 403  # not signed in
    csrf = sign_in(web)
    assert web.post(f"/jobs/{job_id}/retry", data={"csrf": "forged"}).status_code == 403
    cross = web.post(f"/jobs/{job_id}/retry", data={"csrf": csrf},
                     headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert app.store.job_get(job_id).state == JobState.FAILED

    done = web.post(f"/jobs/{job_id}/retry", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job_id}?done=retried"
    assert app.store.job_get(job_id).state == JobState.AVAILABLE
    page = web.get(done.headers["location"]).text
    assert "Job requeued" in page and "state-available" in page

    assert web.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf}).status_code == 200
    assert app.store.job_get(job_id).state == JobState.CANCELLED
    [anomaly] = app.store.anomaly_list()
    web.post(f"/anomalies/{anomaly.id}/resolve", data={"csrf": csrf})
    assert app.store.anomaly_list() == []
    web.post("/logout", data={"csrf": csrf})
    assert web.post(f"/jobs/{job_id}/retry", data={"csrf": csrf}).status_code == 403


def test_api_actions_take_a_bearer_token(app: oncely.App) -> None:
    web = client(app, TOKEN)
    job_id = failed_job(app)
    assert web.post(f"/api/jobs/{job_id}/retry",
                    headers={"Authorization": "Bearer nope"}).status_code == 401
    answer = web.post(f"/api/jobs/{job_id}/retry", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["state"] == "available"
    assert web.post("/api/jobs/999999/retry",
                    headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_no_secret_is_ever_rendered(app: oncely.App) -> None:
    web = client(app, TOKEN)
    sign_in(web)
    email = app.store.job_list(JobFilter(task="emails.send", limit=1))[0].id
    pages = [*PAGES, f"/jobs/{email}", "/api/overview", f"/api/jobs/{email}", "/api/doctor"]
    for path in pages:
        text = web.get(path).text
        assert TOKEN not in text, path
        assert "sk_live_abcdef123456" not in text, path
    assert '"api_key": "***"' in web.get(f"/jobs/{email}").text


def test_fleet_metrics_parse_and_count_the_storm(app: oncely.App) -> None:
    work(app, "w-extra")  # drain the email job
    text = client(app).get("/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    window = {"schedule": SCHEDULE, "window": "1h"}
    assert value("oncely_schedule_executions", source="slot", **window) == 1
    assert value("oncely_schedule_executions", source="retry", **window) == 24
    assert value("oncely_schedule_executions", source="non_slot", **window) == 6
    assert value("oncely_schedule_expected_executions", **window) == 1
    assert value("oncely_schedule_execution_ratio", **window) == 31
    assert value("oncely_queue_jobs", queue="billing", state="failed") == 6
    assert value("oncely_queue_jobs", queue="billing", state="succeeded") == 1
    assert value("oncely_queue_jobs", queue="default", state="succeeded") == 1
    assert value("oncely_dead_letters", queue="billing") == 6
    assert value("oncely_queue_due_jobs", queue="default") == 0
    assert value("oncely_anomalies_open", kind="too_many", severity="critical") == 1
    assert value("oncely_lease_takeovers", window="1h") == 0


def test_the_metering_routes_are_mounted_when_installed(app: oncely.App) -> None:
    pytest.importorskip("oncely_billing.web")
    paths = {getattr(route, "path", None) for route in create_app(app).routes}
    assert "/api/orgs/{org_id:int}/ingestion" in paths


def test_schedule_buttons_pause_resume_trigger_and_delete(app: oncely.App) -> None:
    web = client(app, TOKEN)
    page = f"/schedules/{SCHEDULE}"
    assert 'id="schedule-pause"' not in web.get(page).text  # no buttons before signing in
    assert web.post(f"{page}/pause", data={"csrf": "x"}).status_code == 403
    csrf = sign_in(web)
    assert 'id="schedule-pause"' in web.get(page).text
    paused = web.post(f"{page}/pause", data={"csrf": csrf}, follow_redirects=False)
    assert paused.status_code == 303 and app.store.schedule_get(SCHEDULE).paused
    shown = web.get(page).text
    assert 'id="schedule-resume"' in shown and "schedule.paused" in shown and "dashboard" in shown
    web.post(f"{page}/resume", data={"csrf": csrf})
    assert not app.store.schedule_get(SCHEDULE).paused
    assert web.post(f"{page}/trigger", data={"csrf": csrf}).status_code == 200
    web.post(f"{page}/delete", data={"csrf": csrf})
    assert app.store.schedule_get(SCHEDULE) is None
    assert web.get("/schedules").status_code == 200
