"""Billing figures in the fleet's /metrics (the ``oncely.metrics`` entry point), as JSON and on
the dashboard's billing page, after a real threshold run, real sends through aiosmtpd and a real
Stripe metering run against the local stub; each figure checked against the store's own rows."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import oncely
from oncely.testing import FrozenClock, run_job
from oncely.web.app import create_app
from oncely_billing import SmtpSettings, metering_of
from oncely_billing.demo.stripe_stub import StripeStub
from oncely_billing.meter import install_stripe_metering
from oncely_billing.notify import SEND_TASK, outbox_rows
from oncely_billing.stripe_client import StripeSettings
from oncely_billing.thresholds import LAST_RUN_KEY, THRESHOLDS_TASK
from tests.acceptance.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, serve

from .conftest import Events, load_scenario, make_app, run_thresholds
from .test_notifications import Inbox, free_port, smtp  # noqa: F401 (a fixture)
from .test_stripe_meter import FakeUsage

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

STRIPE_TASK = "metering.stripe_usage"
TOKEN = "tok-billing-5c1e9a7d"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Billed:
    app: oncely.App
    stub: StripeStub
    run: dict[str, Any]  # the threshold run's result

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self.app.transaction() as tx:
            return [tuple(row) for row in tx.connection.execute(sql).fetchall()]

    def web(self, token: str | None = None, auth: str = "actions") -> TestClient:
        return TestClient(create_app(self.app, token, auth=auth), base_url="http://127.0.0.1:8700")


@pytest.fixture
def billed(store_url: str, clock: FrozenClock, events: Events,
           smtp: tuple[Inbox, int]) -> Iterator[Billed]:  # noqa: F811
    yield from billing_figures(store_url, clock, events, smtp[1])


def billing_figures(store_url: str, clock: FrozenClock, events: Events,
                    port: int) -> Iterator[Billed]:
    """A threshold run (three notifications), one sent, one failing on a dead SMTP port, one
    left pending; an hourly Stripe run delivered to the stub."""
    app = make_app(store_url, None, clock, events, smtp=SmtpSettings(host="127.0.0.1", port=port))
    load_scenario(app, events)
    with StripeStub(clock=clock) as stub:
        install_stripe_metering(app, FakeUsage(12), settings=StripeSettings(
            api_key="sk_test_oncely", api_base=stub.url, rate=5000, burst=500, concurrency=4,
            timeout=2.0, attempts=2, base_delay=0.005, max_delay=0.05))
        run = run_thresholds(app)
        runtime = metering_of(app)
        first, second, _ = (row["id"] for row in outbox_rows(app))
        assert run_job(runtime.send_task, outbox_id=first).state == oncely.JobState.SUCCEEDED
        runtime.settings = runtime.settings.with_(
            smtp=SmtpSettings(host="127.0.0.1", port=free_port(), timeout=2))
        assert run_job(runtime.send_task, outbox_id=second).state == oncely.JobState.RETRYABLE
        assert run_job(app.tasks[STRIPE_TASK]).state == oncely.JobState.SUCCEEDED
        yield Billed(app, stub, run)
    app.close()


def scrape(web: TestClient, path: str = "/metrics") -> Samples:
    response = web.get(path)
    assert response.status_code == 200, response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def test_fleet_metrics_carry_the_billing_figures_the_store_holds(billed: Billed) -> None:
    found = scrape(billed.web())
    app = billed.app
    assert found[("oncely_addon_collector_up", (("addon", "billing"),))] == 1
    retryable = [value for (name, labels), value in found.items()
                 if name == "oncely_queue_jobs" and ("state", "retryable") in labels]
    assert sum(retryable) == 1  # the engine's families beside (the failing send)

    state = json.loads(billed.rows(
        f"SELECT value FROM metering_state WHERE key = '{LAST_RUN_KEY}'")[0][0])
    assert found[("oncely_billing_org_rows_written", ())] == state["org_rows_written"] \
        == billed.run["org_rows_written"] > 0

    outbox = dict(billed.rows(
        "SELECT status, COUNT(*) FROM metering_notification_outbox GROUP BY status"))
    assert outbox == {"sent": 1, "pending": 2}
    for status in ("sent", "pending", "no_recipients"):
        assert found[("oncely_billing_emails", (("status", status),))] == outbox.get(status, 0)
    failing = billed.rows("SELECT COUNT(*) FROM metering_notification_outbox "
                          "WHERE status = 'pending' AND last_error IS NOT NULL")[0][0]
    assert found[("oncely_billing_emails_failing", ())] == failing == 1

    orgs = dict(billed.rows("SELECT threshold_state, COUNT(*) FROM metering_organizations "
                            "WHERE threshold_state IS NOT NULL GROUP BY threshold_state"))
    assert orgs == {"WARNING": 2, "BLOCKED": 1}
    for state_name, count in orgs.items():
        assert found[("oncely_billing_orgs", (("state", state_name),))] == count

    deliveries = dict(billed.rows(
        "SELECT status, COUNT(*) FROM oncely_stripe_deliveries GROUP BY status"))
    assert deliveries["delivered"] == billed.stub.stats().accepted > 0
    for status in ("delivered", "duplicate", "failed", "retry", "lost"):
        labels = (("status", status), ("window", "24h"))
        assert found[("oncely_billing_stripe_events", labels)] == deliveries.get(status, 0)
    for status in ("failed", "retry", "lost"):
        assert found[("oncely_billing_stripe_events_unsent", (("status", status),))] == 0
    mark_ms = billed.rows("SELECT hour_start_ms FROM oncely_stripe_watermark")[0][0]
    lag = app.clock.now().timestamp() - (mark_ms / 1000 + 3600)
    assert found[("oncely_billing_stripe_watermark_lag_seconds", ())] == lag > 0

    for task in (THRESHOLDS_TASK, SEND_TASK, STRIPE_TASK):
        last = app.read.executions(task=task, limit=1)[0]
        assert last.ended_at is not None
        labels = (("task", task),)
        assert found[("oncely_billing_last_run_duration_seconds", labels)] == \
            (last.ended_at - last.started_at).total_seconds()
        assert found[("oncely_billing_last_run_finished_timestamp_seconds", labels)] == \
            last.ended_at.timestamp()

    # the same figures as JSON, and the billing plugin's own Prometheus route
    figures = billed.web().get("/api/billing/metrics").json()
    assert figures["emails"] == {"sent": 1, "pending": 2, "failing": 1, "no_recipients": 0}
    assert figures["last_runs"][STRIPE_TASK]["outcome"] == "succeeded"
    own = scrape(billed.web(), "/metrics/billing")
    assert own == {key: value for key, value in found.items()
                   if key[0].startswith("oncely_billing")}


def test_the_billing_page_shows_the_figures(billed: Billed) -> None:
    web = billed.web()
    assert '<a href="/billing"' in web.get("/").text  # in the navigation
    page = web.get("/billing")
    assert page.status_code == 200
    assert "content-security-policy" in page.headers and "<script>" not in page.text
    text = page.text
    rows = billed.run["org_rows_written"]
    for cell, value in [("billing-org-rows", rows), ("billing-emails-sent", 1),
                        ("billing-emails-pending", 2), ("billing-emails-failing", 1),
                        ("billing-orgs-warning", 2), ("billing-orgs-blocked", 1),
                        ("billing-stripe-delivered", billed.stub.stats().accepted),
                        ("billing-stripe-failed", 0)]:
        assert f'id="{cell}">{value}<' in text, cell
    assert 'id="billing-stripe-lag">40m00s<' in text  # 10:40, hour 09:00-10:00 reported
    job = billed.app.read.jobs(task=THRESHOLDS_TASK, limit=1)[0]
    assert f'<a href="/jobs/{job.id}">{job.id}</a>' in text  # its last run and its history
    assert f'<td class="rows-written">{rows}</td>' in text
    assert STRIPE_TASK in text and SEND_TASK in text and "retryable" in text

    guarded = billed.web(TOKEN, auth="reads")
    refused = guarded.get("/billing", follow_redirects=False)
    assert refused.status_code == 303 and refused.headers["location"] == "/login"
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/api/billing/metrics").status_code == 401
    shown = guarded.get("/billing", headers={"authorization": f"Bearer {TOKEN}"})
    assert shown.status_code == 200 and 'id="billing-emails-failing">1<' in shown.text


def test_job_results_are_escaped_on_the_page(
    sqlite_url: str, clock: FrozenClock, events: Events
) -> None:
    app = make_app(sqlite_url, None, clock, events)
    load_scenario(app, events)
    run_thresholds(app)
    other = oncely.App(sqlite_url, clock=clock)  # a run whose result carries markup

    @other.task(name=THRESHOLDS_TASK)
    def forged(ctx: oncely.JobContext) -> dict[str, Any]:
        return {"mode": "<img src=x onerror=alert(1)>", "org_rows_written": 3}

    assert run_job(forged).state == oncely.JobState.SUCCEEDED
    text = TestClient(create_app(app), base_url="http://127.0.0.1:8700").get("/billing").text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    other.close()
    app.close()


def test_a_store_without_billing_tables_has_no_billing_figures(sqlite_url: str) -> None:
    app = oncely.App(sqlite_url, clock=oncely.FrozenClock())
    app.migrate()
    web = TestClient(create_app(app), base_url="http://127.0.0.1:8700")
    found = scrape(web)
    assert not [name for name, _ in found if name.startswith("oncely_billing_")]
    assert found[("oncely_addon_collector_up", (("addon", "billing"),))] == 1
    assert 'id="billing-absent"' in web.get("/billing").text
    with app.transaction() as tx:  # read only: the scrape and the page created nothing
        tables = [row[0] for row in tx.connection.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE '%metering%' "
            "OR name LIKE '%stripe%'").fetchall()]
    assert tables == []
    app.close()


def test_stripe_figures(sqlite_url: str) -> None:
    from oncely_billing.metrics import registry, snapshot

    from .test_stripe_meter import START, Harness

    clock = FrozenClock(START)
    with StripeStub(clock=clock) as stub:
        harness = Harness(sqlite_url, clock, stub)
        assert harness.run().state == oncely.JobState.SUCCEEDED
        stripe = snapshot(harness.app)["stripe"]
        assert stripe["events"]["delivered"] == stub.stats().accepted > 0
        assert stripe["events"]["failed"] == 0 and stripe["unsent"]["failed"] == 0
        assert stripe["watermark_lag_seconds"] == 5 * 60  # 12:05 now, 11:00-12:00 reported
        from prometheus_client import generate_latest

        text = generate_latest(registry(harness.app)).decode()
        assert "oncely_billing_stripe_watermark_lag_seconds 300.0" in text
        harness.app.close()


@pytest.fixture
def billed_sqlite(sqlite_url: str, clock: FrozenClock, events: Events,
                  smtp: tuple[Inbox, int]) -> Iterator[Billed]:  # noqa: F811
    yield from billing_figures(sqlite_url, clock, events, smtp[1])


def test_the_billing_page_in_chromium(billed_sqlite: Billed, tmp_path: Path) -> None:
    """Reached from the navigation in a real browser, under the dashboard's CSP: no console
    error, the figures shown."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with serve(create_app(billed_sqlite.app)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(base_url=url)
        tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: problems.append(str(e)))
        tab.goto("/")
        tab.click("nav a[href='/billing']")
        tab.locator("#billing-figures").wait_for()
        assert tab.title() == "Billing · oncely"
        assert tab.locator("#billing-emails-failing").inner_text() == "1"
        assert tab.locator("#billing-orgs-blocked").inner_text() == "1"
        assert tab.locator("table.billing-history tbody tr").count() == 1
        tab.screenshot(path=str(tmp_path / "billing.png"), full_page=True)
        browser.close()
    assert problems == [], problems
