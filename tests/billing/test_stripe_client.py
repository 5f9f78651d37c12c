"""The Stripe stub speaks Stripe's meter-event semantics to the real SDK, and the client classifies
every answer, throttles, retries, breaks the circuit and keeps one call per customer and meter."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe

import oncely
from oncely.testing import FrozenClock
from oncely_billing.demo.stripe_stub import StripeStub
from oncely_billing.stripe_client import (
    MeterEvent,
    Outcome,
    StripeMeterClient,
    StripeRejectedAccount,
    StripeSettings,
    StripeUnavailable,
)

NOW = datetime(2026, 3, 10, 12, 5, tzinfo=UTC)
HOUR_MS = int(datetime(2026, 3, 10, 11, tzinfo=UTC).timestamp() * 1000)
HOUR_END = int(datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp())


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def stub(clock: FrozenClock) -> Iterator[StripeStub]:
    with StripeStub(clock=clock) as server:
        yield server


def settings(stub: StripeStub, **changes: Any) -> StripeSettings:
    base = StripeSettings(api_key="sk_test_oncely", api_base=stub.url, rate=5000, burst=500,
                          concurrency=4, timeout=0.5, attempts=4, base_delay=0.005,
                          max_delay=0.02, breaker_threshold=3, breaker_reset=60)
    return base.with_(**changes)


def event(org: str = "org1", customer: str = "cus_1", name: str = "tracing_events",
          value: int = 12, timestamp: int = HOUR_END) -> MeterEvent:
    return MeterEvent(name, org, customer, value, HOUR_MS, timestamp)


def sdk(stub: StripeStub, key: str = "sk_test_oncely") -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": stub.url}, max_network_retries=0)


# the stub ---------------------------------------------------------------------------------
def test_stub_answers_a_repeated_identifier_with_stripes_400(stub: StripeStub) -> None:
    client = sdk(stub)
    created = client.v1.billing.meter_events.create(event().params())  # type: ignore[arg-type]
    assert created.identifier == "tracing_events:org1:" + str(HOUR_MS)
    assert created.payload.to_dict() == {"stripe_customer_id": "cus_1", "value": "12"}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.billing.meter_events.create(event().params())  # type: ignore[arg-type]
    error = caught.value
    assert error.http_status == 400
    assert error.json_body is not None
    body = error.json_body["error"]
    assert body["type"] == "invalid_request_error"
    assert body["message"] == f"An event already exists with identifier {event().identifier}."
    assert error.headers is not None and error.headers.get("Stripe-Should-Retry") == "false"
    assert stub.accepted_identifiers() == [event().identifier]
    assert stub.stats().duplicates == 1


@pytest.mark.parametrize(("offset", "code"), [
    (-(35 * 86400 + 1), "timestamp_too_far_in_past"),
    (301, "timestamp_in_future"),
])
def test_stub_checks_the_timestamp_window_on_its_own_clock(
        stub: StripeStub, offset: int, code: str) -> None:
    stamp = int(NOW.timestamp()) + offset
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk(stub).v1.billing.meter_events.create(
            event(timestamp=stamp).params())  # type: ignore[arg-type]
    assert caught.value.code == code
    # the same event is fine when the stub's clock says it is recent
    assert stub.accepted() == []


def test_stub_refuses_calls_without_a_key_and_rate_limits(stub: StripeStub) -> None:
    request = urllib.request.Request(stub.url + "/v1/billing/meter_events", data=b"x=1")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request)
    assert caught.value.code == 401
    stub.configure(rate_limit=3)
    client = sdk(stub)
    statuses = []
    for index in range(6):
        try:
            client.v1.billing.meter_events.create(
                event(org=f"o{index}").params())  # type: ignore[arg-type]
            statuses.append(200)
        except stripe.RateLimitError as exc:
            statuses.append(exc.http_status or 0)
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    with urllib.request.urlopen(stub.url + "/_stub/events") as answer:
        recorded = json.load(answer)
    assert [row["identifier"] for row in recorded] == stub.accepted_identifiers()


# the client -------------------------------------------------------------------------------
def test_client_counts_a_duplicate_as_delivered_without_retrying(stub: StripeStub) -> None:
    client = StripeMeterClient(settings(stub))
    assert client.send(event()).outcome == Outcome.DELIVERED
    again = client.send(event())
    assert again.outcome == Outcome.DUPLICATE and again.delivered
    assert again.attempts == 1
    assert stub.stats().requests == 2


def test_client_records_other_4xx_with_stripes_code(stub: StripeStub) -> None:
    stub.configure(reject_customers={"cus_gone": (400, "resource_missing")})
    result = StripeMeterClient(settings(stub)).send(event(customer="cus_gone"))
    assert result.outcome == Outcome.FAILED
    assert result.code == "resource_missing" and "cus_gone" in (result.message or "")
    assert stub.stats().requests == 1


def test_client_stops_on_a_rejected_key_without_blaming_the_org(stub: StripeStub,
                                                                 monkeypatch: Any) -> None:
    stub.configure(reject_customers={"cus_1": (401, "api_key_expired")})
    with pytest.raises(StripeRejectedAccount):
        StripeMeterClient(settings(stub)).send(event())


def test_client_retries_5xx_and_timeouts_then_delivers_once(stub: StripeStub) -> None:
    client = StripeMeterClient(settings(stub, breaker_threshold=10))
    stub.configure(fail_next=2)
    assert client.send(event(org="a")).outcome == Outcome.DELIVERED
    # Stripe keeps the event but the answer comes too late: the retry meets "already exists".
    stub.configure(delay_next=1, delay_seconds=1.0)
    late = client.send(event(org="b"))
    assert late.outcome == Outcome.DUPLICATE and late.attempts == 2
    assert sorted(stub.accepted_identifiers()) == sorted([event(org="a").identifier,
                                                          event(org="b").identifier])


def test_client_opens_the_breaker_when_stripe_is_down(stub: StripeStub) -> None:
    changes: list[tuple[str, str]] = []
    client = StripeMeterClient(settings(stub),
                               on_breaker_change=lambda a, b: changes.append((a, b)))
    stub.configure(outage=True)
    with pytest.raises(StripeUnavailable):
        client.send(event(org="a"))
    assert client.breaker.state == "open" and ("closed", "open") in changes
    before = stub.stats().requests
    with pytest.raises(StripeUnavailable, match="circuit open"):
        client.send(event(org="b"))
    assert stub.stats().requests == before  # open: Stripe is not called at all


def test_client_keeps_one_call_per_customer_and_meter(stub: StripeStub) -> None:
    stub.configure(delay=0.02, reject_concurrent=True)
    client = StripeMeterClient(settings(stub, concurrency=8))
    events = [event(org=f"org{i}", customer="cus_shared", name=name)
              for i in range(10) for name in ("tracing_events", "tracing_observations")]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client.send, events))
    assert all(result.outcome == Outcome.DELIVERED for result in results)
    assert stub.stats().concurrent_violations == 0
    assert len(set(stub.accepted_identifiers())) == 20


def test_client_throttle_keeps_the_rate(stub: StripeStub) -> None:
    client = StripeMeterClient(settings(stub, rate=50, burst=5))
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client.send, [event(org=f"o{i}") for i in range(30)]))
    elapsed = time.monotonic() - started
    assert elapsed >= (30 - 5) / 50 * 0.9  # 25 tokens beyond the burst at 50/s


def test_settings_come_from_the_environment_and_hide_the_key() -> None:
    found = StripeSettings.from_env({"ONCELY_STRIPE_API_KEY": "sk_live_secret",
                                     "ONCELY_STRIPE_RATE": "150",
                                     "ONCELY_STRIPE_API_BASE": "http://127.0.0.1:1"})
    assert found.rate == 150 and found.api_base == "http://127.0.0.1:1"
    assert "sk_live_secret" not in repr(found)
    assert "sk_live_secret" not in repr(StripeMeterClient(found))
    with pytest.raises(oncely.ConfigError, match="ONCELY_STRIPE_API_KEY"):
        StripeSettings.from_env({})
    with pytest.raises(oncely.ConfigError, match="ONCELY_STRIPE_RATE"):
        StripeSettings.from_env({"ONCELY_STRIPE_API_KEY": "k", "ONCELY_STRIPE_RATE": "fast"})


def test_timestamps_are_checked_against_the_injected_clock(clock: FrozenClock,
                                                           stub: StripeStub) -> None:
    client = StripeMeterClient(settings(stub))
    clock.advance(timedelta(days=36))  # the hour is now too old for Stripe
    result = client.send(event())
    assert result.outcome == Outcome.FAILED and result.code == "timestamp_too_far_in_past"
