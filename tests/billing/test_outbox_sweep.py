"""No notification is lost: an SMTP outage that outlasts the send job's retries leaves the outbox
row pending, and the sweeper hands it to new send jobs (with backoff) until SMTP is back; then
each (organization, cycle, threshold) is delivered once, under a stable Message-ID."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import oncely
from oncely.testing import assert_enqueued, run_job, wait_until, worker_running
from oncely_billing import SmtpSettings, metering_of
from oncely_billing.notify import SEND_TASK, outbox_rows
from oncely_billing.sweep import SETTLE

from .conftest import (
    EXPECTED_NOTIFICATIONS,
    Events,
    advance_when_idle,
    load_scenario,
    make_app,
    run_thresholds,
)
from .test_notifications import Inbox, free_port


def count(app: oncely.App, state: oncely.JobState) -> int:
    return sum(1 for job in send_jobs(app) if job.state == state)


def send_jobs(app: oncely.App) -> list[oncely.Job]:
    try:
        return assert_enqueued(app, SEND_TASK)
    except AssertionError:
        return []


def drive(app: oncely.App, clock: oncely.FrozenClock, done: Callable[[], bool],
          message: str) -> None:
    """Let a worker run the send jobs while frozen time moves on, until ``done``: only while no
    send job runs or is due, and then straight to the next one's ``run_at``."""
    def step() -> bool:
        if done():
            return True
        advance_when_idle(clock, send_jobs(app))
        return False

    with worker_running(app, queues=["notifications"], maintenance=False):
        try:
            wait_until(step, timeout=120, interval=0.02, message=message)
        except AssertionError as exc:
            jobs = [(job.id, job.state.value, job.attempt, job.errors[-1].message[:80]
                     if job.errors else None) for job in send_jobs(app)]
            raise AssertionError(f"{exc}; send jobs at {clock.now()}: {jobs}") from None


def sweep(app: oncely.App) -> dict[str, int]:
    result = run_job(metering_of(app).sweep_task)
    assert result.state == oncely.JobState.SUCCEEDED, result.outcome.error
    return dict(result.result)


def test_an_smtp_outage_past_the_retry_budget_loses_no_email(
    store_url: str, clock: oncely.FrozenClock, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A retry falls due when the frozen clock moves, which wakes no worker: it looks again after
    # its poll interval, kept short so the hours of outage take seconds.
    monkeypatch.setenv("ONCELY_POLL_INTERVAL", "0.05")
    port = free_port()  # nothing listens here until SMTP "comes back"
    app = make_app(store_url, None, clock, events,
                   smtp=SmtpSettings(host="127.0.0.1", port=port, timeout=2),
                   notify_sweep_base_delay=60.0, notify_sweep_max_delay=600.0)
    load_scenario(app, events)
    run_thresholds(app)
    assert len(outbox_rows(app)) == 3

    clock.advance(SETTLE)  # the first send jobs are still alive: the sweeper leaves them alone
    assert sweep(app) == {"looked_at": 3, "requeued": 0, "still_running": 3, "pending": 3}

    drive(app, clock, lambda: count(app, oncely.JobState.FAILED) == 3, "send jobs gave up")
    assert {row["status"] for row in outbox_rows(app)} == {"pending"}

    for round_number in (1, 2):  # hours of outage: every sweep gives each row a new job
        clock.advance(3600)
        if round_number == 1:
            assert sweep(app)["requeued"] == 3  # the task on its own
        else:
            assert run_thresholds(app)["notifications_requeued"] == 3  # part of the hourly run
        drive(app, clock, lambda n=round_number: count(app, oncely.JobState.FAILED) == 3 + 3 * n,
              f"re-queued send jobs gave up (round {round_number})")
        assert {row["status"] for row in outbox_rows(app)} == {"pending"}

    from aiosmtpd.controller import Controller

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()  # SMTP is back
    try:
        clock.advance(3600)
        assert sweep(app)["requeued"] == 3
        drive(app, clock, lambda: all(row["status"] == "sent" for row in outbox_rows(app)),
              "every notification sent once SMTP is back")
        clock.advance(3600)
        assert sweep(app) == {"looked_at": 0, "requeued": 0, "still_running": 0, "pending": 0}
        run_thresholds(app)
    finally:
        controller.stop()

    assert len(inbox.messages) == 3  # each (org, cycle, threshold) exactly once
    sent = {(row["org_id"], row["threshold"], row["kind"]) for row in outbox_rows(app)}
    assert sent == EXPECTED_NOTIFICATIONS
    ids = {row["org_id"]: row["id"] for row in outbox_rows(app)}
    for _, message in inbox.messages:
        org, cycle, threshold = message["X-Oncely-Notification"].split(":")
        assert message["Message-ID"] == (
            f"<billing.{org}.{cycle.replace('-', '')}.{threshold}.{ids[int(org)]}@example.com>")
    app.close()
