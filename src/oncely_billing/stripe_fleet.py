"""Stripe pressure held across the fleet, not per process.

Two things bound what the billing jobs send to Stripe: the throttle (calls per second, lowered
by 429s) and the circuit breaker (no calls while Stripe is failing). Both live in the
:class:`~oncely_billing.stripe_client.StripeMeterClient` of one process. They hold fleet-wide
because of two rules:

* **One sender at a time.** The Stripe metering task is a singleton: its lease admits one run
  in the whole fleet, whichever of the workers claims it (follow-up runs share the key). So one
  process's throttle is the fleet's throttle, and ten workers send at the configured rate, not
  ten times it. (The other way — a token bucket and breaker in the job store — would cost a
  store round trip per call at 200 calls/s, for no gain while only one run sends.)
* **State handed on through the store** (``metering_state``), because the next run may land on
  another worker that never saw the outage or the 429 storm:

  - ``stripe.breaker`` — ``{"open_until": epoch seconds}``, written when a breaker opens and
    cleared when one closes. A run that starts before ``open_until`` sends nothing (it fails
    retryable, like an open breaker); one that starts after it opens its own breaker with the
    reset elapsed, so its first call is the one half-open trial for the whole fleet;
  - ``stripe.rate`` — the throttle's rate at the end of a run; the next run starts from it (and
    recovers from there as successes come back).

Store errors here never stop a run: the handed-on state is advisory, the singleton is the bound.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import oncely
from oncely_billing import db, migrations
from oncely_billing.resilience import CircuitOpen
from oncely_billing.stripe_client import StripeMeterClient

log = logging.getLogger("oncely_billing.stripe")
BREAKER_KEY = "stripe.breaker"
RATE_KEY = "stripe.rate"


def _read(app: oncely.App, key: str) -> Any:
    migrations.ensure_schema(app)
    with db.connection(app) as conn:
        row = db.fetch_one(conn, db.sql_dialect(app), "state_get", {"key": key})
    return None if row is None else json.loads(row[0])


def _write(app: oncely.App, key: str, value: Any, now: datetime) -> None:
    try:
        migrations.ensure_schema(app)
        with db.connection(app) as conn:
            db.run(conn, db.sql_dialect(app), "state_put",
                   {"key": key, "value": json.dumps(value), "now": now.timestamp()})
    except oncely.StoreError as exc:
        log.warning("Stripe fleet state %s not saved: %s", key, exc)


def before_run(app: oncely.App, client: StripeMeterClient, now: datetime) -> None:
    """Adopt the fleet's breaker and rate; raise :class:`CircuitOpen` while Stripe is paused."""
    breaker = _read(app, BREAKER_KEY) or {}
    open_until = breaker.get("open_until")
    if open_until is not None:
        remaining = float(open_until) - now.timestamp()
        if remaining > 0:
            raise CircuitOpen("stripe (fleet-wide)", remaining)
        if client.breaker.state == "closed":
            client.breaker.trip(0.0)  # the next call is the fleet's one half-open trial
    rate = _read(app, RATE_KEY)
    if isinstance(rate, int | float) and 0 < rate < client.settings.rate:
        client.throttle.rate = float(rate)


def breaker_changed(app: oncely.App, client: StripeMeterClient, state: str,
                    now: datetime) -> None:
    if state == "open":
        _write(app, BREAKER_KEY, {"open_until": now.timestamp() +
                                  client.settings.breaker_reset}, now)
    elif state == "closed":
        _write(app, BREAKER_KEY, {}, now)


def after_run(app: oncely.App, client: StripeMeterClient, now: datetime) -> None:
    _write(app, RATE_KEY, client.throttle.rate, now)
