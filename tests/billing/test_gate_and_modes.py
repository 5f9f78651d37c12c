"""Shadow mode, the paid gate, and the ingestion gate with its cache (function and HTTP)."""

from __future__ import annotations

import pytest

import oncely
from oncely_billing import ingestion_allowed, metering_of, models
from oncely_billing.notify import outbox_rows
from oncely_billing.web import ingestion_status, routes

from .conftest import (
    EXPECTED_AFTER_FIRST_RUN,
    Events,
    load_scenario,
    make_app,
    run_thresholds,
    state_of,
)


def test_shadow_mode_tracks_usage_only(
    store_url: str, clock: oncely.FrozenClock, events: Events
) -> None:
    app = make_app(store_url, None, clock, events, enforce=False)
    load_scenario(app, events)
    result = run_thresholds(app)

    usage = {org: used for org, (used, _) in EXPECTED_AFTER_FIRST_RUN.items()}
    assert state_of(app) == {org: (used, None) for org, used in usage.items()}
    assert outbox_rows(app) == [] and result["notifications"] == 0
    assert ingestion_allowed(3, app=app)

    # enforcement switched on mid-cycle: states follow usage, and nobody is blocked silently
    runtime = metering_of(app)
    runtime.settings = runtime.settings.with_(enforce=True)
    run_thresholds(app)
    assert state_of(app) == EXPECTED_AFTER_FIRST_RUN
    assert {(r["org_id"], r["threshold"]) for r in outbox_rows(app)} == {
        (1, 500), (2, 2000), (3, 2500)}
    assert not ingestion_allowed(3, app=app)

    # and back to shadow mode: states are cleared, the gate opens
    runtime.settings = runtime.settings.with_(enforce=False)
    result = run_thresholds(app)
    assert result["unblocked"] == 1 and ingestion_allowed(3, app=app)
    app.close()


def test_paying_unblocks_at_once_and_the_job_clears_the_state(
    store_url: str, clock: oncely.FrozenClock, events: Events
) -> None:
    app = make_app(store_url, None, clock, events)
    load_scenario(app, events)
    run_thresholds(app)
    assert not ingestion_allowed(3, app=app)
    status, body = ingestion_status(app, 3)
    assert status == 403 and body["ingestion"] == "blocked"
    assert "2,500 units" in body["message"] and "2026-04-01" in body["message"]
    assert body["billing_url"] == "https://app.test/org/3/billing"

    models.set_billing(app, 3, plan="pro", subscription_status="active")
    assert ingestion_allowed(3, app=app)  # paid: allowed before the job even runs
    result = run_thresholds(app)
    assert result["unblocked"] == 1 and result["notifications"] == 0
    assert models.org_status(app, 3).threshold_state is None
    assert ingestion_status(app, 3)[0] == 200
    app.close()


def test_gate_cache_and_invalidation(
    sqlite_url: str, clock: oncely.FrozenClock, events: Events
) -> None:
    app = make_app(sqlite_url, None, clock, events, gate_ttl=3600.0, gate_refresh=3600.0)
    load_scenario(app, events)
    gate = metering_of(app).gate
    assert gate.allowed(3) and gate.allowed(3)
    assert (gate.misses, gate.hits) == (1, 1)  # the second answer came from the cache

    run_thresholds(app)  # Charlie becomes BLOCKED: the job invalidates its answer at once
    assert not gate.allowed(3)
    assert gate.allowed(1)  # WARNING does not block

    # another process's gate learns of it through the generation number (checked every
    # gate_refresh seconds, here forced by moving its clock)
    now = [0.0]
    other = type(gate)(app, gate.settings.with_(gate_refresh=1.0), monotonic=lambda: now[0])
    models.set_billing(app, 3, subscription_status="active")
    assert other.allowed(3)  # paid now: fresh lookup
    models.set_billing(app, 3, subscription_status="canceled")
    assert other.allowed(3)  # cached
    now[0] += 2
    assert not other.allowed(3)  # the billing change bumped the generation: no longer paid
    models.set_billing(app, 3, subscription_status="active")
    run_thresholds(app)  # paid: the job unblocks Charlie and bumps the generation
    models.set_billing(app, 3, subscription_status=None)
    clock.advance(3600)
    run_thresholds(app)  # free again and over the limit: BLOCKED again, another bump
    now[0] += 2
    assert not other.allowed(3)
    assert ingestion_status(app, 999) == (404, {
        "org_id": 999, "error": "unknown_organization",
        "message": "organization 999 does not exist"})
    app.close()


@pytest.mark.filterwarnings("ignore:Using `httpx`")
def test_http_route(sqlite_url: str, clock: oncely.FrozenClock, events: Events) -> None:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    app = make_app(sqlite_url, None, clock, events)
    load_scenario(app, events)
    run_thresholds(app)
    with TestClient(Starlette(routes=routes(app))) as client:
        blocked = client.get("/api/orgs/3/ingestion")
        assert blocked.status_code == 403
        assert blocked.json()["error"] == "ingestion_blocked"
        assert "Ingestion is blocked for organization 3" in blocked.json()["message"]
        allowed = client.get("/api/orgs/1/ingestion")
        assert allowed.status_code == 200 and allowed.json()["state"] == "WARNING"
        assert client.get("/api/orgs/424242/ingestion").status_code == 404
    app.close()
