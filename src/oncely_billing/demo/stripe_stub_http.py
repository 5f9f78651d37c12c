"""The HTTP side of the local Stripe stub (:mod:`oncely_billing.demo.stripe_stub`): routes,
keep-alive and the wire format of answers. The stub decides what to answer; this sends it.

Routes: ``POST /v1/billing/meter_events``; ``POST /_stub/faults`` (JSON of fault fields),
``POST /_stub/heal``; ``GET /_stub/events``, ``GET /_stub/stats``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oncely_billing.demo.stripe_stub import StripeStub

METER_EVENTS_PATH = "/v1/billing/meter_events"


class Reply(Exception):
    """An error answer in Stripe's format: raised inside request handling, turned into a
    response."""

    def __init__(self, status: int, error_type: str, message: str, code: str | None = None,
                 param: str | None = None, should_retry: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        body: dict[str, Any] = {"type": error_type, "message": message}
        if code is not None:
            body["code"] = code
            body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            body["param"] = param
        self.body = {"error": body}
        self.should_retry = should_retry


def handler_for(stub: StripeStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses one connection per thread
        disable_nagle_algorithm = True  # headers and body leave at once, no delayed-ACK stall
        wbufsize = 64 * 1024

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            if self.path == METER_EVENTS_PATH:
                headers = {key.lower(): value for key, value in self.headers.items()}
                answer = stub.handle_meter_event(headers, body)
                try:
                    if answer.delay > 0:
                        time.sleep(answer.delay)
                    if isinstance(answer.payload, Reply):
                        self._send(answer.status, answer.payload.body, answer.payload.should_retry)
                    else:
                        self._send(answer.status, answer.payload)
                finally:
                    answer.release()
            elif self.path == "/_stub/faults":
                stub.configure(**json.loads(body or "{}"))
                self._send(200, {"ok": True})
            elif self.path == "/_stub/heal":
                stub.heal()
                self._send(200, {"ok": True})
            else:
                self._not_found("POST")

        def do_GET(self) -> None:
            if self.path == "/_stub/events":
                self._send(200, [asdict(event) for event in stub.accepted()])
            elif self.path == "/_stub/stats":
                self._send(200, asdict(stub.stats()))
            else:
                self._not_found("GET")

        def _not_found(self, method: str) -> None:
            message = f"Unrecognized request URL ({method}: {self.path})."
            self._send(404, {"error": {"type": "invalid_request_error", "message": message}})

        def _send(self, status: int, payload: Any, should_retry: bool | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
            if should_retry is not None:
                self.send_header("Stripe-Should-Retry", "true" if should_retry else "false")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data)  # the client may have timed out and gone

    return Handler
