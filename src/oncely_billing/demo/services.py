"""The outside world of the billing jobs, run inside the demo process on 127.0.0.1.

* :class:`MailCapture` — an SMTP server (aiosmtpd) that keeps every message it receives, so the
  demo counts emails and duplicates (the same ``X-Oncely-Notification`` key, i.e. the same
  organization, cycle and threshold, received more than once);
* the Stripe stub (:class:`.stripe_stub.StripeStub`), on the phase's warp clock so
  it judges meter-event timestamps in simulated time; a fresh one per phase.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from dataclasses import dataclass
from email import message_from_bytes
from typing import Any

import oncely
from oncely_billing.demo.stripe_stub import StripeStub

NOTIFICATION_HEADER = "X-Oncely-Notification"


@dataclass(frozen=True)
class Mail:
    key: str  # org:cycle:threshold
    message_id: str
    recipients: tuple[str, ...]
    subject: str


class MailCapture:
    """A local SMTP server; ``messages()`` returns what it received since the last ``reset()``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            raise oncely.ConfigError(
                "oncely demo needs aiosmtpd for its local SMTP server: pip install aiosmtpd"
            ) from None
        self.host = host
        self.port = free_port(host)
        self._lock = threading.Lock()
        self._mails: list[Mail] = []
        self._controller = Controller(_Handler(self), hostname=host, port=self.port)

    def start(self) -> MailCapture:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def keep(self, mail: Mail) -> None:
        with self._lock:
            self._mails.append(mail)

    def reset(self) -> None:
        with self._lock:
            self._mails = []

    def messages(self) -> list[Mail]:
        with self._lock:
            return list(self._mails)

    def summary(self) -> dict[str, Any]:
        mails = self.messages()
        per_key = Counter(mail.key for mail in mails)
        repeated = {key: count for key, count in per_key.items() if count > 1}
        return {
            "sent": len(mails),
            "distinct_notifications": len(per_key),
            "duplicates": sum(count - 1 for count in repeated.values()),
            "sent_more_than_once": len(repeated),
            "duplicated_notifications": sorted(repeated)[:20],
            "recipients": sum(len(mail.recipients) for mail in mails),
        }


class _Handler:
    def __init__(self, capture: MailCapture) -> None:
        self.capture = capture

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        message = message_from_bytes(raw if isinstance(raw, bytes) else str(raw).encode())
        self.capture.keep(Mail(
            key=str(message.get(NOTIFICATION_HEADER, "")),
            message_id=str(message.get("Message-ID", "")),
            recipients=tuple(str(r) for r in envelope.rcpt_tos),
            subject=str(message.get("Subject", "")),
        ))
        return "250 Message accepted for delivery"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def start_stripe(clock: oncely.Clock) -> StripeStub:
    """A fresh Stripe stub on 127.0.0.1 judging timestamps by ``clock``."""
    return StripeStub(clock=clock, host="127.0.0.1").start()


def stripe_summary(stub: StripeStub) -> dict[str, Any]:
    stats = stub.stats()
    identifiers = stub.accepted_identifiers()
    hours = sorted({int(identifier.rsplit(":", 1)[-1]) for identifier in identifiers})
    return {
        "requests": stats.requests,
        "accepted": stats.accepted,
        "duplicates_rejected": stats.duplicates,
        "rate_limited": stats.rate_limited,
        "other_rejected": stats.rejected + stats.server_errors,
        "duplicate_identifiers_accepted": len(identifiers) - len(set(identifiers)),
        "hours": hours,  # hour starts (epoch ms) with at least one event accepted
        "wasted_calls": stats.requests - stats.accepted,
        "concurrent_violations": stats.concurrent_violations,
    }
