"""The dashboard in a real browser: Playwright driving the machine's Chromium (never a downloaded
one) against a dashboard served by uvicorn over a store holding the incident's data. It loads
every page, signs in, clicks retry on a failed job and sees it requeued, and saves screenshots
in the test's tmp dir."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.observe_data import SCHEDULE, START, billing_app, healthy_hours, incident

import oncely
from oncely.maintenance.watchdog import Watchdog
from oncely.store.params import JobClaimParams, JobFilter, JobInsert, WorkerInfo
from oncely.types import JobState

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TOKEN = "browser-test-token-5b1e"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is absent: install Debian's Chromium (apt-get install -y chromium); "
           "the tests never download a browser",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(web: Any) -> Iterator[str]:
    """``web`` (an ASGI app) served by uvicorn on a free loopback port, in a thread: its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[oncely.App]:
    app = billing_app(f"sqlite:///{tmp_path / 'dashboard.db'}", oncely.FrozenClock(START))
    app.register_schedules()
    healthy_hours(app, 10)  # ten quiet hours, then the storm
    app.clock.advance(600)
    incident(app, workers=6)
    for _ in range(2):  # a worker freezes holding a singleton lease; another takes it over
        app.store.job_insert(JobInsert("emails.digest", singleton_key="digest"), app.clock.now())
    app.store.job_claim(JobClaimParams("host-b:77:ef34", app.clock.now(), 1, 10.0))
    app.clock.advance(11)
    now = app.clock.now()
    app.store.worker_register(WorkerInfo("host-a:4242:ab12cd", "host-a", 4242, None, 2, now))
    app.store.leader_elect("host-a:4242:ab12cd", now, 15.0)
    app.store.job_claim(JobClaimParams("host-a:4242:ab12cd", now, 1, 30.0))
    Watchdog(app.runtime).run_once()
    yield app
    app.close()


@pytest.fixture
def base_url(app: oncely.App) -> Iterator[str]:

    from oncely.web.app import create_app

    with serve(create_app(app, TOKEN)) as url:
        yield url


@pytest.fixture
def page(base_url: str, tmp_path: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        context = browser.new_context(base_url=base_url, viewport={"width": 1360, "height": 900})
        tab = context.new_page()
        problems: list[str] = []
        tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: problems.append(str(e)))
        yield tab
        assert problems == [], f"browser errors: {problems}"
        context.close()
        browser.close()


def shot(page: object, tmp_path: Path, name: str) -> None:
    path = tmp_path / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    assert path.stat().st_size > 5_000


def test_pages_load_and_retry_requeues_a_failed_job(
    page, app: oncely.App, tmp_path: Path
) -> None:
    page.goto("/")
    assert page.title() == "Overview · oncely"
    page.get_by_text(f"schedule {SCHEDULE}: 31.0x expected in the last hour").wait_for()
    assert page.locator("table.queues tbody tr").count() == 2
    shot(page, tmp_path, "overview")

    page.click(f"a[href='/schedules/{SCHEDULE}']")
    chart = page.locator("svg.timeline")
    chart.wait_for()
    assert page.locator("svg.timeline g.bucket").count() == 24
    assert page.locator("svg.timeline g.bucket[data-actual='31']").count() == 1
    assert page.locator("#next-slot").inner_text().startswith("2026-11-30T11:35:00")
    assert page.locator("svg.timeline g.bucket[data-actual='1'][data-expected='1']").count() == 10
    shot(page, tmp_path, "schedule")

    for path, name, text in [("/workers", "workers", "lease.taken_over"),
                             ("/anomalies", "anomalies", "31.0x expected"),
                             ("/jobs?state=failed", "jobs", "analytics query timed out")]:
        page.goto(path)
        page.get_by_text(text).first.wait_for()
        shot(page, tmp_path, name)
    assert page.locator("table.jobs tbody tr").count() == 6

    if page.locator("nav a[href='/billing']").count():  # oncely_billing's page, when installed
        page.click("nav a[href='/billing']")
        page.locator("#billing-absent").wait_for()  # this store holds no billing tables
        assert page.title() == "Billing · oncely"
        shot(page, tmp_path, "billing")

    failed = app.store.job_list(JobFilter(state=JobState.FAILED, limit=1))[0]
    page.goto(f"/jobs/{failed.id}")
    assert page.locator("#retry").count() == 0  # not signed in: no action offered
    page.goto("/login")
    page.fill("input[name=token]", TOKEN)
    page.click("#sign-in")
    page.get_by_text("Signed in: actions are enabled.").wait_for()

    page.goto(f"/jobs/{failed.id}")
    assert page.locator("#job-state").inner_text() == "failed"
    page.click("#retry")
    page.wait_for_url(f"**/jobs/{failed.id}?done=retried")
    page.get_by_text("Job requeued").wait_for()
    assert page.locator("#job-state").inner_text() == "available"
    assert app.store.job_get(failed.id).state == JobState.AVAILABLE
    shot(page, tmp_path, "job-retried")


def test_a_page_reached_through_dns_rebinding_gets_no_data(base_url: str, tmp_path: Path) -> None:
    """Chromium resolves attacker.example to 127.0.0.1 (as a rebinding DNS server would), so the
    attacker's page and its fetches are same-origin with the dashboard's socket: the dashboard
    refuses them by their Host header; the loopback name still works."""
    from playwright.sync_api import sync_playwright

    port = base_url.rsplit(":", 1)[1]
    rebound = f"http://attacker.example:{port}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP attacker.example 127.0.0.1"])
        tab = browser.new_page()
        for path in ("/", "/api/jobs", "/api/doctor", "/jobs?state=failed"):
            answer = tab.goto(rebound + path)
            assert answer is not None and answer.status == 400, path
            assert "Invalid host header" in tab.content()
            assert "analytics query timed out" not in tab.content()
        # a script on the attacker's page reading the API it now shares an origin with
        status = tab.evaluate("fetch('/api/jobs').then(r => r.status)")
        assert status == 400
        shot(tab, tmp_path, "rebinding-refused")
        answer = tab.goto(f"{base_url}/jobs?state=failed")
        assert answer is not None and answer.status == 200
        assert "analytics query timed out" in tab.content()
        browser.close()
