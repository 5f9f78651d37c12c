"""The dashboard's queue operations, clicked in a real browser (the machine's Chromium through
Playwright, as in test_dashboard_browser): pause a queue with a reason and resume it, retry the
failed jobs of a queue and of a task, cancel a selection of jobs. Each click goes through the
guard (session + CSRF) and the facade, changes the store, and leaves an operator event that
names the dashboard's token."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tests.acceptance.test_dashboard_browser import (  # noqa: F401  (fixtures)
    CHROMIUM,
    TOKEN,
    app,
    base_url,
    page,
    shot,
)

import oncely
from oncely.store.params import JobFilter
from oncely.types import JobState

BY = f"dashboard:{hashlib.sha256(TOKEN.encode()).hexdigest()[:8]}"


def jobs(of: oncely.App, state: JobState, queue: str = "billing") -> list[int]:
    return [j.id for j in of.store.job_list(JobFilter(state=state, queue=queue, limit=1000))]


def paused(of: oncely.App, queue: str) -> bool:
    return any(c.name == queue and c.paused for c in of.store.control_list())


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent")
def test_queue_buttons_pause_resume_retry_and_cancel(page, app: oncely.App,  # noqa: F811
                                                     tmp_path: Path) -> None:
    page.on("dialog", lambda dialog: dialog.accept())  # the data-confirm prompts
    page.goto("/queues")
    assert page.locator("#queue-billing form").count() == 0  # read-only until signed in
    page.goto("/login")
    page.fill("input[name=token]", TOKEN)
    page.click("#sign-in")
    page.get_by_text("Signed in: actions are enabled.").wait_for()

    page.goto("/queues")
    row = page.locator("#queue-billing")
    row.locator("input[name=reason]").fill("stripe outage")
    row.get_by_role("button", name="pause").click()
    page.get_by_text("Queue paused").wait_for()
    assert row.locator(".queue-state").inner_text() == "paused"
    assert paused(app, "billing")
    log = page.locator("table.actions-log")
    assert "queue.paused" in log.inner_text() and BY in log.inner_text()
    assert "reason=stripe outage" in log.inner_text()
    shot(page, tmp_path, "queue-paused")

    row.get_by_role("button", name="resume").click()
    page.get_by_text("Queue resumed").wait_for()
    assert row.locator(".queue-state").inner_text() == "active"
    assert not paused(app, "billing")

    failed = jobs(app, JobState.FAILED)
    assert len(failed) == 6
    row.get_by_role("button", name="retry 6 failed").click()
    page.get_by_text("Failed jobs requeued. 6 job(s)").wait_for()
    assert jobs(app, JobState.FAILED) == [] and set(failed) <= set(jobs(app, JobState.AVAILABLE))

    page.fill("#retry-task input[name=task]", "billing.thresholds")
    page.click("#retry-task button")
    page.get_by_text("Failed jobs requeued. 0 job(s)").wait_for()  # none left to retry

    page.goto("/jobs?queue=billing&state=available")
    chosen = sorted(failed)[:2]
    for job_id in chosen:
        page.check(f"input[name=job][value='{job_id}']")
    page.fill("#cancel-selected input[name=reason]", "duplicate run")
    page.click("#cancel-selected button")
    page.get_by_text("Cancellation recorded for the selected jobs. 2 job(s)").wait_for()
    assert set(chosen) <= set(jobs(app, JobState.CANCELLED))
    assert len(jobs(app, JobState.AVAILABLE)) == 4
    shot(page, tmp_path, "jobs-cancelled")

    actions = [e for e in app.store.event_list(limit=50) if e.subject == BY]
    names = [e.name for e in actions]
    assert names.count("job.cancel_requested") == 2
    assert {"queue.paused", "queue.resumed", "job.dead_letters_retried"} <= set(names)
