"""The dashboard's schedule form and buttons clicked in a real browser (the machine's Chromium
through Playwright, as in test_dashboard_browser), on every store: a dynamic schedule is created,
refused with the user's input kept (a declared schedule's name, bad JSON, an unknown time zone),
edited into a new revision and deleted; a declared schedule is paused with a reason, resumed,
triggered and backfilled. Every action goes through the guard (session + CSRF) and the facade and
is recorded with the dashboard's token as who, read back on the schedule's history, in the
events and in `oncely ledger`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.acceptance.test_dashboard_browser import (  # noqa: F401  (fixtures)
    CHROMIUM,
    CHROMIUM_ARGS,
    TOKEN,
    base_url,
    shot,
)
from tests.observe_data import SCHEDULE, START, TASK, billing_app

import oncely
from oncely.cli import main
from oncely.schedules import ScheduleSpec

BY = f"dashboard:{hashlib.sha256(TOKEN.encode()).hexdigest()[:8]}"
NAME = "org-42-thresholds"

browser = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent")


@pytest.fixture
def app(any_url: str) -> Iterator[oncely.App]:
    app = billing_app(any_url, oncely.FrozenClock(START))
    app.register_schedules()
    yield app
    app.close()


@pytest.fixture
def page(base_url: str) -> Iterator[object]:  # noqa: F811
    """A Chromium tab; a refused form is answered 400, which the browser logs as a failed load:
    those are expected, any other console error fails the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        context = browser.new_context(base_url=base_url, viewport={"width": 1360, "height": 900})
        tab = context.new_page()
        problems: list[str] = []
        tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: problems.append(str(e)))
        yield tab
        unexpected = [p for p in problems if "status of 400 (Bad Request)" not in p]
        assert unexpected == [], f"browser errors: {unexpected}"
        context.close()
        browser.close()


def sign_in(page) -> None:  # type: ignore[no-untyped-def]
    page.goto("/login")
    page.fill("input[name=token]", TOKEN)
    page.click("#sign-in")
    page.get_by_text("Signed in: actions are enabled.").wait_for()


def submit(page, status: int) -> None:  # type: ignore[no-untyped-def]
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#schedule-save")
    assert answer.value.status == status
    page.wait_for_load_state()


@browser
def test_create_edit_and_delete_a_dynamic_schedule(page, app: oncely.App,
                                                   tmp_path: Path) -> None:
    page.on("dialog", lambda dialog: dialog.accept())  # the data-confirm prompts
    page.goto("/schedules")
    assert page.locator("#schedule-form").count() == 0  # read-only until signed in
    sign_in(page)

    page.goto("/schedules")
    form = page.locator("#schedule-form")
    form.locator("input[name=name]").fill(SCHEDULE)  # a declared schedule's name
    form.locator("select[name=task]").select_option(TASK)
    form.locator("input[name=every]").fill("60")
    form.locator("textarea[name=args]").fill('{"org": 42')
    submit(page, 400)
    assert "is not JSON" in page.locator("#form-error").inner_text()
    form.locator("textarea[name=args]").fill('{"org": 42}')
    submit(page, 400)
    error = page.locator("#form-error").inner_text()
    assert f"schedule '{SCHEDULE}' exists already (declared)" in error
    # the user's input is still there, the declared schedule untouched
    assert form.locator("input[name=name]").input_value() == SCHEDULE
    assert form.locator("input[name=every]").input_value() == "60"
    assert form.locator("textarea[name=args]").input_value() == '{"org": 42}'
    assert form.locator("select[name=task]").input_value() == TASK
    declared = app.store.schedule_get(SCHEDULE)
    assert declared is not None and declared.origin == "declared" and declared.revision == 1
    shot(page, tmp_path, "schedule-form-refused")

    form.locator("input[name=name]").fill(NAME)
    form.locator("input[name=misfire_grace]").fill("30")
    submit(page, 303)
    page.wait_for_url(f"**/schedules/{NAME}?done=schedule-created")
    page.get_by_text("Schedule created (dynamic)").wait_for()
    row = app.store.schedule_get(NAME)
    assert row is not None and (row.origin, row.revision) == ("dynamic", 1)
    spec = ScheduleSpec.from_spec_dict(row.spec)
    assert (spec.task, spec.every, spec.args, spec.misfire_grace) == (TASK, 60.0, {"org": 42}, 30)

    # edit: the form holds the stored definition; a refused edit keeps the input, stores nothing
    edit = page.locator("#schedule-form")
    assert edit.locator("input[name=every]").input_value() == "60"
    edit.locator("input[name=every]").fill("")
    edit.locator("input[name=cron]").fill("*/10 * * * *")
    edit.locator("input[name=tz]").fill("Mars/Base")
    submit(page, 400)
    assert "unknown time zone 'Mars/Base'" in page.locator("#form-error").inner_text()
    assert edit.locator("input[name=tz]").input_value() == "Mars/Base"
    assert edit.locator("input[name=cron]").input_value() == "*/10 * * * *"
    assert app.store.schedule_get(NAME).revision == 1  # type: ignore[union-attr]
    edit.locator("input[name=tz]").fill("Europe/Paris")
    edit.locator("input[name=enabled]").uncheck()
    submit(page, 303)
    page.get_by_text("Schedule saved").wait_for()
    row = app.store.schedule_get(NAME)
    spec = ScheduleSpec.from_spec_dict(row.spec)  # type: ignore[union-attr]
    assert row.revision == 2  # type: ignore[union-attr]
    assert (spec.cron, spec.every, spec.tz, spec.enabled) == ("*/10 * * * *", None,
                                                              "Europe/Paris", False)
    assert spec.args == {"org": 42} and spec.misfire_grace == 30
    history = page.locator("#history").inner_text()
    assert "schedule.revised" in history and "schedule.registered" in history
    assert BY in history
    shot(page, tmp_path, "schedule-edited")

    page.click("#schedule-delete")
    page.wait_for_url("**/schedules?done=schedule-deleted")
    assert app.store.schedule_get(NAME) is None
    events = {e.name: e.detail.get("by") for e in app.store.schedule_history(NAME, 20)}
    assert events == {"schedule.registered": BY, "schedule.revised": BY,
                      "schedule.deleted": BY}


@browser
def test_a_declared_schedule_offers_buttons_not_the_form(page, app: oncely.App,
                                                         tmp_path: Path, capsys,
                                                         monkeypatch) -> None:
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page)
    page.goto(f"/schedules/{SCHEDULE}")
    assert page.locator("#schedule-form").count() == 0
    page.locator("#declared-note").wait_for()

    page.fill("input[name=reason]", "stripe outage")
    page.click("#schedule-pause")
    page.get_by_text("Schedule paused").wait_for()
    assert page.locator("#schedule-state").inner_text() == "paused (stripe outage)"
    page.click("#schedule-resume")
    page.get_by_text("Schedule resumed").wait_for()
    page.click("#schedule-trigger")
    page.get_by_text("Current slot triggered").wait_for()
    page.click("#schedule-trigger")
    page.get_by_text("Nothing enqueued: the current slot already has a job").wait_for()
    backfill = page.locator("#schedule-backfill")
    backfill.locator("input[name=from]").fill("2026-11-29T21:00:00+00:00")
    backfill.locator("input[name=to]").fill(START.isoformat())
    backfill.locator("button").click()
    page.get_by_text("Backfill enqueued: 2 job(s)").wait_for()  # 21:35, 22:35; 23:35 ran
    shot(page, tmp_path, "schedule-buttons")

    history = {(e.name, e.detail.get("by")) for e in app.store.schedule_history(SCHEDULE, 20)}
    assert {("schedule.paused", BY), ("schedule.resumed", BY), ("slot.triggered", BY),
            ("schedule.backfilled", BY)} <= history
    monkeypatch.setenv("COLUMNS", "400")  # one history row a line
    try:
        main(["--database-url", app.url, "ledger", SCHEDULE])
    except SystemExit as exc:
        assert not exc.code
    printed = capsys.readouterr().out
    assert printed.count(BY) >= 4 and "schedule.backfilled" in printed


def test_the_command_line_takes_the_same_fields(tmp_path: Path, capsys, monkeypatch) -> None:
    """`oncely schedules create|update` has the form's fields (misfire grace, enabled) and
    refuses args that are not a JSON object with the same line."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("ONCELY_DATABASE_URL", url)  # a new App per command, on this store
    base = ["--app", "tests.observe_data:billing_app_from_env"]

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            main([*base, *args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        seen = capsys.readouterr()
        return code, seen.out + seen.err

    assert run("migrate")[0] == 0
    code, said = run("schedules", "create", "org-7", "--task", "emails.send",
                     "--every", "60", "--args", "[7]")
    assert code == 2 and "--args must be a JSON object" in said
    code, said = run("schedules", "create", "org-7", "--task", "emails.send",
                     "--every", "60", "--args", '{"to": "ops@example.com"}', "--misfire-grace",
                     "30", "--disabled")
    assert code == 0, said
    code, said = run("schedules", "update", "org-7", "--enabled", "--misfire-grace", "5")
    assert code == 0 and "revision 2" in said
    app = oncely.App(url)
    try:
        row = app.store.schedule_get("org-7")
        assert row is not None
        spec = ScheduleSpec.from_spec_dict(row.spec)
        assert (spec.args, spec.misfire_grace, spec.enabled) == ({"to": "ops@example.com"}, 5,
                                                                   True)
        by = {e.detail.get("by") for e in app.store.schedule_history("org-7", 10)}
    finally:
        app.close()
    assert len(by) == 1 and "@" in by.pop()  # user@host
