"""Add-ons in the dashboard through their entry points: an installed distribution (a real
``.dist-info`` on ``sys.path``, found by importlib.metadata) registers collectors under
``oncely.metrics`` and a page under ``oncely.web``. A collector that raises, cannot be built or
claims an engine family's name never costs the engine its /metrics; it is counted and logged once
per failure streak. A page is drawn in the dashboard's layout and linked from its navigation."""

from __future__ import annotations

import logging
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import oncely
from oncely.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

ADDON = '''
from prometheus_client.core import GaugeMetricFamily

from oncely.plugins import Page


class Flaky:
    failing = True

    def collect(self):
        if Flaky.failing:
            raise RuntimeError("the acme store is down")
        yield GaugeMetricFamily("oncely_flaky_widgets", "Widgets", value=7)


class Clash:
    def collect(self):
        yield GaugeMetricFamily("oncely_queue_jobs", "Not the engine's", value=1)


class Plain:
    def collect(self):
        yield GaugeMetricFamily("acme_widgets", "Widgets of acme", value=3)


def flaky(app):
    return Flaky()


def clash(app):
    return Clash()


def plain(app):
    return Plain()


def unbuildable(app):
    raise RuntimeError("acme needs ACME_URL")


def routes(app):
    return [Page("/acme", "Acme <figures>",
                 lambda: "<p id='acme-body'>3 widgets &amp; no script</p>", nav="Acme")]
'''
ENTRY_POINTS = """
[oncely.metrics]
flaky = acme_addon:flaky
clash = acme_addon:clash
plain = acme_addon:plain
unbuildable = acme_addon:unbuildable
missing = acme_addon_not_installed:collector

[oncely.web]
acme = acme_addon:routes
"""


@pytest.fixture
def addon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    site = tmp_path / "site"
    info = site / "acme_addon-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-addon\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    (site / "acme_addon.py").write_text(ADDON)
    monkeypatch.syspath_prepend(str(site))
    import acme_addon

    yield acme_addon.Flaky
    monkeypatch.delitem(__import__("sys").modules, "acme_addon")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[oncely.App]:
    app = oncely.App(f"sqlite:///{tmp_path / 'oncely.db'}", clock=oncely.FrozenClock())

    @app.task(name="acme.work", queue="acme")
    def work(ctx: oncely.JobContext) -> None:
        return None

    app.migrate()
    app.enqueue("acme.work")
    yield app
    app.close()


def scrape(web: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = web.get("/metrics")
    assert response.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def addon_value(found: dict, name: str, addon: str) -> float:
    return found[(name, (("addon", addon),))]


def test_a_failing_addon_collector_leaves_the_engine_metrics_whole(
    addon: type, app: oncely.App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "oncely")
    web = TestClient(create_app(app), base_url="http://127.0.0.1:8700")
    for _ in range(2):
        found = scrape(web)  # the whole text parses: no family is served twice
        assert found[("oncely_queue_jobs", (("queue", "acme"), ("state", "available")))] == 1
        assert found[("acme_widgets", ())] == 3  # a sound add-on is served beside broken ones
        assert not any(name.startswith("oncely_flaky_") for name, _ in found)
        assert sum(1 for name, _ in found if name == "oncely_queue_jobs") >= 7  # the engine's own
    for name in ("flaky", "clash", "unbuildable"):
        assert addon_value(found, "oncely_addon_collector_errors_total", name) == 2
        assert addon_value(found, "oncely_addon_collector_up", name) == 0
    assert addon_value(found, "oncely_addon_collector_errors_total", "plain") == 0
    assert addon_value(found, "oncely_addon_collector_up", "plain") == 1
    assert ("oncely_addon_collector_up", (("addon", "missing"),)) not in found  # extra absent

    failures = [r for r in caplog.records if getattr(r, "event", "") == "metrics.addon_failed"]
    assert sorted(r.addon for r in failures) == ["clash", "flaky", "unbuildable"]  # once each
    flaky = next(r for r in failures if r.addon == "flaky")
    assert flaky.exc_info is not None and "the acme store is down" in flaky.getMessage()
    clash = next(r for r in failures if r.addon == "clash")
    assert "engine's namespace" in clash.getMessage()

    addon.failing = False  # type: ignore[attr-defined]
    found = scrape(web)
    assert found[("oncely_flaky_widgets", ())] == 7
    assert addon_value(found, "oncely_addon_collector_up", "flaky") == 1
    assert addon_value(found, "oncely_addon_collector_errors_total", "flaky") == 2
    assert [r.addon for r in caplog.records
            if getattr(r, "event", "") == "metrics.addon_recovered"] == ["flaky"]


def test_an_addon_page_is_drawn_in_the_layout_and_linked(addon: type, app: oncely.App) -> None:
    web = TestClient(create_app(app), base_url="http://127.0.0.1:8700")
    for path in ("/", "/acme"):
        assert '<a href="/acme"' in web.get(path).text
    page = web.get("/acme")
    assert page.status_code == 200
    assert "content-security-policy" in page.headers
    assert "<title>Acme &lt;figures&gt; · oncely</title>" in page.text
    assert "<p id='acme-body'>3 widgets &amp; no script</p>" in page.text
    assert 'href="/acme" class="active"' in page.text

    guarded = TestClient(create_app(app, "tok-9f2c41d7e8a6b5", auth="reads"),
                         base_url="http://127.0.0.1:8700")
    refused = guarded.get("/acme", follow_redirects=False)
    assert refused.status_code == 303 and refused.headers["location"] == "/login"
    assert guarded.get("/metrics").status_code == 401
    shown = guarded.get("/acme", headers={"authorization": "Bearer tok-9f2c41d7e8a6b5"})
    assert shown.status_code == 200 and "acme-body" in shown.text
