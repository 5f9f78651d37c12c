"""Exactly-once emails: outbox rows written with the state, delivered by the send-notification
task through a real SMTP server (aiosmtpd on localhost)."""

from __future__ import annotations

import email
import socket
import threading
from collections.abc import Iterator
from email.message import Message

import pytest

import oncely
from oncely.testing import assert_enqueued, run_job, wait_until, worker_running
from oncely_billing import SmtpSettings, metering_of
from oncely_billing.notify import SEND_TASK, outbox_rows

from .conftest import EXPECTED_NOTIFICATIONS, Events, load_scenario, make_app, run_thresholds


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        message = email.message_from_bytes(envelope.content)  # type: ignore[attr-defined]
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message))  # type: ignore[attr-defined]
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    from aiosmtpd.controller import Controller

    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def body(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def test_three_runs_of_the_same_hour_send_each_email_once(
    store_url: str, clock: oncely.FrozenClock, events: Events, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    app = make_app(store_url, None, clock, events, smtp=SmtpSettings(host="127.0.0.1", port=port))
    load_scenario(app, events)
    for _ in range(3):
        run_thresholds(app)
    assert len(outbox_rows(app)) == 3
    assert_enqueued(app, SEND_TASK, count=3)

    with worker_running(app, queues=["notifications"], maintenance=False):
        wait_until(lambda: all(row["status"] == "sent" for row in outbox_rows(app)),
                   timeout=30, message="all notifications sent")
    run_thresholds(app)  # a fourth run after delivery: still nothing new

    assert len(inbox.messages) == 3
    by_org = {message["X-Oncely-Notification"].split(":")[0]: (to, message)
              for to, message in inbox.messages}
    assert set(by_org) == {"1", "2", "3"}
    to, alpha = by_org["1"]
    assert sorted(to) == ["admin@alpha.test", "owner@alpha.test"]  # owners and admins only
    text = body(alpha)
    assert "Alpha" in alpha["Subject"] and '"Alpha"' in text
    assert "600 units" in text and "500 units per billing cycle" in text
    assert "resets on 31 March 2026" in text
    assert "https://app.test/org/1/billing" in text
    _, charlie = by_org["3"]
    assert "Ingestion blocked" in charlie["Subject"] and "2,500" in charlie["Subject"]
    assert "no longer accepted" in body(charlie)
    _, bravo = by_org["2"]
    assert "2,100" in bravo["Subject"] and "You crossed 2,000 units" in body(bravo)
    sent = {(row["org_id"], row["threshold"], row["kind"]) for row in outbox_rows(app)}
    assert sent == EXPECTED_NOTIFICATIONS

    # delivering a row again (a duplicate job) sends nothing
    again = run_job(metering_of(app).send_task, outbox_id=outbox_rows(app)[0]["id"])
    assert again.result["sent"] is False and len(inbox.messages) == 3
    app.close()


def test_a_failed_send_is_recorded_and_retried(
    sqlite_url: str, clock: oncely.FrozenClock, events: Events, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    app = make_app(sqlite_url, None, clock, events,
                   smtp=SmtpSettings(host="127.0.0.1", port=free_port(), timeout=2))
    load_scenario(app, events)
    run_thresholds(app)
    outbox_id = outbox_rows(app)[0]["id"]
    runtime = metering_of(app)

    failed = run_job(runtime.send_task, outbox_id=outbox_id)  # nobody listens on that port
    assert failed.state == oncely.JobState.RETRYABLE
    assert "ConnectionRefusedError" in failed.job.errors[-1].message
    assert outbox_rows(app)[0]["status"] == "pending"

    runtime.settings = runtime.settings.with_(smtp=SmtpSettings(host="127.0.0.1", port=port))
    delivered = run_job(runtime.send_task, outbox_id=outbox_id)
    assert delivered.state == oncely.JobState.SUCCEEDED
    assert len(inbox.messages) == 1 and outbox_rows(app)[0]["status"] == "sent"
    app.close()
