"""A local Stripe-compatible server for ``POST /v1/billing/meter_events``: tests and the bench.

The real SDK is pointed at it through its API base (``base_addresses={"api": stub.url}``), so the
requests it answers are exactly the ones production sends. It follows Stripe's documented behaviour
for meter events:

* form-encoded parameters as the SDK sends them (``event_name``, ``identifier``, ``timestamp``,
  ``payload[stripe_customer_id]``, ``payload[value]``) and a Bearer API key (401 without one);
* **identifier dedup**: a second event with an identifier already accepted is answered HTTP 400,
  ``invalid_request_error``, "An event already exists with identifier …", with the header
  ``Stripe-Should-Retry: false``. The body's ``code`` (``resource_already_exists``) is the stub's
  choice: the client goes by the message, the part reports of Stripe's real answer agree on.
  Stripe promises uniqueness for "a rolling period of at least 24 hours"; the stub keeps every
  identifier forever by default (``dedup_window=None``), which is stricter;
* **timestamp window**: more than 35 days in the past or more than 5 minutes in the future is a 400
  (``timestamp_too_far_in_past`` / ``timestamp_in_future``), judged by the stub's injectable
  ``clock`` (an ``oncely.Clock``: tests share their FrozenClock with it);
* **rate limit**: beyond ``rate_limit`` calls in any one second, HTTP 429 ``rate_limit``; and a
  second concurrent call for the same (customer, event name) is counted in
  ``stats.concurrent_violations`` (and answered 429 ``lock_timeout`` if ``reject_concurrent``).

Faults are injected through :class:`Faults` (in-process) or ``POST /_stub/faults`` (JSON):
``outage`` (every call 503), ``fail_next`` (the next N calls get ``fail_status``),
``throttle_next`` (the next N calls get 429), ``delay``/``delay_next`` (answer after sleeping —
*after* recording the event, as when Stripe kept an event whose response the client never saw),
``reject_customers`` (customer id → (status, code): a per-customer 4xx).

Everything accepted is kept in order: :meth:`StripeStub.accepted`, ``GET /_stub/events``, and
summed as a meter would (:meth:`StripeStub.billed`); counters in :meth:`StripeStub.stats` /
``GET /_stub/stats``. The HTTP side is :mod:`oncely_billing.demo.stripe_stub_http`. Run
standalone with ``python -m oncely_billing.demo.stripe_stub --port 12111`` (prints its URL).
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import oncely
from oncely_billing.demo.stripe_stub_http import Reply as _Reply
from oncely_billing.demo.stripe_stub_http import handler_for

MAX_PAST_SECONDS = 35 * 86_400
MAX_FUTURE_SECONDS = 300
DUPLICATE_MESSAGE = "An event already exists with identifier {identifier}."


@dataclass
class Faults:
    """What the stub does wrong on purpose. Mutate under :meth:`StripeStub.configure`."""

    outage: bool = False
    outage_status: int = 503
    fail_next: int = 0
    fail_status: int = 500
    throttle_next: int = 0
    delay: float = 0.0  # seconds added to every answer
    delay_next: int = 0  # ...or only to the next N answers (with delay_seconds)
    delay_seconds: float = 0.0
    rate_limit: float | None = None  # calls per rolling second; None: unlimited
    reject_concurrent: bool = False
    reject_customers: dict[str, tuple[int, str]] = field(default_factory=dict)


@dataclass
class StubStats:
    requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0  # other 4xx
    rate_limited: int = 0
    server_errors: int = 0
    concurrent_violations: int = 0


@dataclass(frozen=True)
class AcceptedEvent:
    identifier: str
    event_name: str
    customer_id: str
    value: str
    timestamp: int
    received_at: float  # time.time() when accepted


class StripeStub:
    """The stub server; ``with StripeStub() as stub: ... stub.url`` runs it in a thread."""

    def __init__(self, clock: oncely.Clock | None = None, host: str = "127.0.0.1",
                 port: int = 0, dedup_window: float | None = None) -> None:
        self.clock = clock or oncely.SystemClock()
        self.faults = Faults()
        self.dedup_window = dedup_window
        self._lock = threading.Lock()
        self._stats = StubStats()
        self._accepted: list[AcceptedEvent] = []
        self._seen: dict[str, float] = {}  # identifier -> stub-clock epoch seconds accepted
        self._recent: deque[float] = deque()  # monotonic times of calls in the last second
        self._in_flight: dict[tuple[str, str], int] = {}
        self._server = ThreadingHTTPServer((host, port), handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> StripeStub:
        self._thread = threading.Thread(target=self._server.serve_forever, name="stripe-stub",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StripeStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # inspection and control --------------------------------------------------------------
    def configure(self, **changes: Any) -> None:
        """Set fault fields by name, e.g. ``stub.configure(outage=True)``."""
        with self._lock:
            for name, value in changes.items():
                if not hasattr(self.faults, name):
                    raise AttributeError(f"the stub has no fault {name!r}")
                setattr(self.faults, name, value)

    def heal(self) -> None:
        with self._lock:
            self.faults = Faults()

    def accepted(self) -> list[AcceptedEvent]:
        with self._lock:
            return list(self._accepted)

    def accepted_identifiers(self) -> list[str]:
        return [event.identifier for event in self.accepted()]

    def billed(self) -> dict[tuple[str, str, int], int]:
        """What a meter sums: units accepted per (customer, event name, event timestamp)."""
        totals: dict[tuple[str, str, int], int] = {}
        for event in self.accepted():
            key = (event.customer_id, event.event_name, event.timestamp)
            totals[key] = totals.get(key, 0) + int(event.value)
        return totals

    def stats(self) -> StubStats:
        with self._lock:
            return StubStats(**asdict(self._stats))

    # request handling --------------------------------------------------------------------
    def handle_meter_event(self, headers: dict[str, str], body: str) -> _Answer:
        """Answer one meter-event call. The caller sends the answer, then calls ``release()``:
        the (customer, event name) pair stays in flight until the response has gone out."""
        with self._lock:
            self._stats.requests += 1
            delay = self._take_delay()
        answer = _Answer(self, 200, None, delay)
        try:
            with self._lock:
                self._check_faults()
            _check_auth(headers)
            event = self._parse(body)
            with self._lock:
                self._check_customer(event.customer_id)
                self._enter_flight(answer, (event.customer_id, event.event_name))
                self._check_duplicate(event.identifier)
                self._accepted.append(event)
                self._seen[event.identifier] = self.clock.now().timestamp()
                self._stats.accepted += 1
            answer.payload = _meter_event_object(event, self.clock.now())
        except _Reply as reply:
            with self._lock:
                self._count(reply)
            answer.status, answer.payload = reply.status, reply
        return answer

    def _enter_flight(self, answer: _Answer, key: tuple[str, str]) -> None:
        if self._in_flight.get(key, 0) > 0:
            self._stats.concurrent_violations += 1
            if self.faults.reject_concurrent:
                raise _Reply(429, "invalid_request_error",
                             "This object cannot be accessed right now because another API "
                             "request or Stripe process is currently accessing it.",
                             code="lock_timeout")
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        answer.key = key

    def _leave_flight(self, key: tuple[str, str]) -> None:
        with self._lock:
            remaining = self._in_flight[key] - 1
            if remaining:
                self._in_flight[key] = remaining
            else:
                del self._in_flight[key]

    def _take_delay(self) -> float:
        delay = self.faults.delay
        if self.faults.delay_next > 0:
            self.faults.delay_next -= 1
            delay += self.faults.delay_seconds
        return delay

    def _check_faults(self) -> None:
        faults = self.faults
        if faults.outage:
            raise _Reply(faults.outage_status, "api_error", "Stripe is unavailable (stub outage).",
                         should_retry=True)
        if faults.fail_next > 0:
            faults.fail_next -= 1
            raise _Reply(faults.fail_status, "api_error", "An unexpected error occurred (stub).",
                         should_retry=True)
        if faults.throttle_next > 0:
            faults.throttle_next -= 1
            raise _rate_limited()
        if faults.rate_limit is not None:
            now = time.monotonic()
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
            if len(self._recent) >= faults.rate_limit:
                raise _rate_limited()
            self._recent.append(now)

    def _parse(self, body: str) -> AcceptedEvent:
        form = {key: values[-1] for key, values in parse_qs(body, keep_blank_values=True).items()}
        for name in ("event_name", "payload[stripe_customer_id]", "payload[value]"):
            if not form.get(name):
                raise _Reply(400, "invalid_request_error", f"Missing required param: {name}.",
                             code="parameter_missing", param=name)
        value = form["payload[value]"]
        if not value.isdigit():
            raise _Reply(400, "invalid_request_error",
                         f"Invalid value {value!r}: meter event values must be whole numbers.",
                         code="meter_event_invalid_value", param="payload[value]")
        identifier = form.get("identifier") or f"stub_{secrets.token_hex(12)}"
        if len(identifier) > 100:
            raise _Reply(400, "invalid_request_error", "identifier is longer than 100 characters.",
                         code="string_length_exceeded", param="identifier")
        now = self.clock.now().timestamp()
        timestamp = int(form.get("timestamp") or now)
        if timestamp < now - MAX_PAST_SECONDS:
            raise _Reply(400, "invalid_request_error",
                         "Meter event timestamp must be within the past 35 days.",
                         code="timestamp_too_far_in_past", param="timestamp")
        if timestamp > now + MAX_FUTURE_SECONDS:
            raise _Reply(400, "invalid_request_error",
                         "Meter event timestamp must be at most 5 minutes in the future.",
                         code="timestamp_in_future", param="timestamp")
        return AcceptedEvent(identifier, form["event_name"], form["payload[stripe_customer_id]"],
                             value, timestamp, time.time())

    def _check_customer(self, customer_id: str) -> None:
        rejection = self.faults.reject_customers.get(customer_id)
        if rejection is not None:
            status, code = rejection
            raise _Reply(status, "invalid_request_error",
                         f"No such customer: '{customer_id}'", code=code,
                         param="payload[stripe_customer_id]")

    def _check_duplicate(self, identifier: str) -> None:
        accepted_at = self._seen.get(identifier)
        if accepted_at is None:
            return
        if self.dedup_window is not None and \
                self.clock.now().timestamp() - accepted_at > self.dedup_window:
            return
        raise _Reply(400, "invalid_request_error", DUPLICATE_MESSAGE.format(identifier=identifier),
                     code="resource_already_exists", param="identifier", should_retry=False)

    def _count(self, reply: _Reply) -> None:
        if reply.status == 429:
            self._stats.rate_limited += 1
        elif reply.status >= 500:
            self._stats.server_errors += 1
        elif "already exists with identifier" in str(reply):
            self._stats.duplicates += 1
        else:
            self._stats.rejected += 1


class _Answer:
    """One meter-event answer: status, body (a dict, or the error), delay before sending."""

    def __init__(self, stub: StripeStub, status: int, payload: Any, delay: float) -> None:
        self.stub = stub
        self.status = status
        self.payload = payload
        self.delay = delay
        self.key: tuple[str, str] | None = None

    def release(self) -> None:
        if self.key is not None:
            self.stub._leave_flight(self.key)
            self.key = None


def _rate_limited() -> _Reply:
    return _Reply(429, "invalid_request_error",
                  "Request rate limit exceeded. Learn more about rate limits here "
                  "https://stripe.com/docs/rate-limits.", code="rate_limit", should_retry=True)


def _check_auth(headers: dict[str, str]) -> None:
    auth = headers.get("authorization", "")
    if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
        raise _Reply(401, "invalid_request_error",
                     "You did not provide an API key. Provide it in the Authorization header.")


def _meter_event_object(event: AcceptedEvent, now: datetime) -> dict[str, Any]:
    return {
        "object": "billing.meter_event",
        "created": int(now.timestamp()),
        "event_name": event.event_name,
        "identifier": event.identifier,
        "livemode": False,
        "payload": {"stripe_customer_id": event.customer_id, "value": event.value},
        "timestamp": event.timestamp,
    }


def main(argv: list[str] | None = None, wait: Callable[[], None] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the local Stripe meter-events stub.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit", type=float, default=None,
                        help="429 beyond this many calls per second (default: unlimited)")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds added to every answer, like Stripe's own latency")
    args = parser.parse_args(argv)
    stub = StripeStub(host=args.host, port=args.port)
    stub.configure(rate_limit=args.rate_limit, delay=args.latency)
    with stub:
        print(stub.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            (wait or threading.Event().wait)()


if __name__ == "__main__":
    main()
