"""Every schedule field and every operator's reason, checked alike at every edge on both stores:
the library (ConfigError), the command line (one line, exit 2), the JSON API (400) and the
dashboard's form (shown again with the reason). And what a store already holds: a stored schedule
no check would pass (an older release's, or one written straight into the store) is skipped alone
by the slot enqueuer — the others keep firing — reported once, and shown as invalid by every
reader instead of a traceback or a 500."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import subprocess
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from tests.acceptance.test_cli import oncely, one_line_error
from tests.apps import basic

import oncely as oncely_lib
from oncely import readmodel
from oncely.cli import main
from oncely.errors import ConfigError, InvalidSchedule
from oncely.maintenance.enqueuer import SlotEnqueuer
from oncely.schedules import ScheduleSpec
from oncely.store.params import JobFilter, ScheduleUpsert
from oncely.web.app import create_app

with warnings.catch_warnings():  # Starlette asks for httpx2; httpx serves the test client fine
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

APP = "tests.apps.basic:app"
TOKEN = "validation-token-5e2a9c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)

# (changes to a valid definition, fragment of the one-line refusal)
BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"queue": "\x1b[31mred"}, "queue name '\\x1b[31mred' is invalid"),
    ({"queue": "bad queue"}, "queue name 'bad queue' is invalid"),
    ({"queue": "q" * 9000}, "queue name 'qqqq"),
    ({"priority": 10**20}, "priority must be a whole number from -2147483648 to 2147483647"),
    ({"every": 1e300}, "every must be a finite number of seconds from 1 to 3162240000"),
    ({"every": float("nan")}, "every must be a finite number of seconds from 1"),
    ({"misfire_grace": 1e300}, "misfire_grace must be a finite number of seconds from 0"),
    ({"misfire_grace": float("inf")}, "misfire_grace must be a finite number of seconds"),
    ({"jitter": 1e300}, "jitter must be a finite number of seconds from 0"),
    ({"jitter": -1}, "jitter must be a finite number of seconds from 0"),
    ({"args": {"n": "a\x00b"}}, "holds a NUL character or a lone surrogate"),
    ({"args": {"n": "\ud800"}}, "holds a NUL character or a lone surrogate"),
    ({"args": {"n": 1, "region": "eu"}}, "the handler takes no argument 'region' (the handler"),
    ({"args": {}}, "task 'record': argument 'n' missing"),
    ({"tz": "Europe/" + "x" * 9000}, "unknown time zone"),
]


def open_app(url: str, clock: oncely_lib.Clock | None = None) -> oncely_lib.App:
    app = oncely_lib.App(url, clock=clock)
    app.tasks = dict(basic.app.tasks)
    return app


@pytest.fixture
def app(any_url: str) -> Iterator[oncely_lib.App]:
    app = open_app(any_url)
    app.create_schedule("org-1", "record", every=60, args={"n": 1})
    yield app
    app.close()


def stored(app: oncely_lib.App) -> dict[str, tuple[int, dict[str, Any]]]:
    return {row.name: (row.revision, row.spec) for row in app.store.schedule_list()}


# every path that defines a schedule refuses the same values ------------------------------------

def test_the_library_refuses_every_bad_field(app: oncely_lib.App) -> None:
    before = stored(app)
    for changes, fragment in BAD_FIELDS:
        definition = {"every": 60, "args": {"n": 1}, **changes}
        with pytest.raises(ConfigError) as created:
            app.create_schedule("org-2", "record", **definition)
        assert fragment in str(created.value) and "\n" not in str(created.value)
        with pytest.raises(ConfigError) as updated:
            app.update_schedule("org-1", **changes)
        assert fragment in str(updated.value)
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            app.schedule("org-3", "record", **definition)  # a declaration, in code
    assert stored(app) == before  # nothing half-stored, no new revision


def in_process(*argv: str) -> subprocess.CompletedProcess[str]:
    """``oncely ARGV`` through :func:`oncely.cli.main` in this process."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def test_the_command_line_refuses_every_bad_field(app: oncely_lib.App, any_url: str) -> None:
    cases = [
        (["--queue", "\x1b[31mred"], "queue name '\\x1b[31mred' is invalid"),
        (["--queue", "bad queue"], "queue name 'bad queue' is invalid"),
        (["--queue", "q" * 9000], "queue name 'qqqq"),
        (["--every", "1e300"], "every must be a finite number of seconds from 1 to 3162240000"),
        (["--every", "nan"], "every must be a finite number of seconds from 1"),
        (["--every", "60", "--misfire-grace", "1e300"], "misfire_grace must be a finite number"),
        (["--every", "60", "--misfire-grace", "-inf"], "misfire_grace must be a finite number"),
        (["--args", '{"n": "a\\u0000b"}'], "holds a NUL character or a lone surrogate"),
        (["--args", '{"m": 1}'], "the handler takes no argument 'm'; argument 'n' missing"),
        (["--tz", "Mars/" + "x" * 300], "unknown time zone"),
        (["--args", "[" * 100_000], "--args is nested too deeply"),
    ]
    base = ["--app", APP, "--database-url", any_url, "schedules"]
    create = ["create", "org-2", "--task", "record", "--every", "60", "--args", '{"n": 1}']
    # the first case as an operator runs it, the others through the same entry point in-process
    options, fragment = cases[0]
    one_line_error(oncely(*base, *create, *options), 2, fragment)
    one_line_error(oncely(*base, "update", "org-1", *options), 2, fragment)
    for options, fragment in cases:
        one_line_error(in_process(*base, *create, *options), 2, fragment)
        one_line_error(in_process(*base, "update", "org-1", *options), 2, fragment)
    assert set(stored(app)) == {"org-1"} and stored(app)["org-1"][0] == 1


def test_the_api_and_the_form_refuse_every_bad_field(app: oncely_lib.App) -> None:
    web = TestClient(create_app(app, TOKEN), base_url="http://127.0.0.1:8700",
                     raise_server_exceptions=False)
    before = stored(app)
    for changes, fragment in BAD_FIELDS:
        body = {"name": "org-2", "task": "record", "every": 60, "args": {"n": 1}, **changes}
        created = web.post("/api/schedules", headers=AUTH, content=json.dumps(body))
        assert created.status_code == 400 and fragment in created.json()["error"], created.text
        patched = web.patch("/api/schedules/org-1", headers=AUTH, content=json.dumps(changes))
        assert patched.status_code == 400 and fragment in patched.json()["error"], patched.text
    for raw in ("[" * 100_000, '{"name": "org-2", "task": "record", "every": 60, "args": '
                + "[" * 100_000):
        answer = web.post("/api/schedules", headers=AUTH, content=raw)
        assert answer.status_code == 400 and answer.json()["error"] == "the body must be JSON"
    assert stored(app) == before
    # the form: the user's input comes back with the reason above it
    web.post("/login", data={"token": TOKEN}, follow_redirects=False)
    csrf = re.search(r'name="csrf" value="([^"]+)"', web.get("/schedules").text).group(1)
    form = {"name": "org-2", "task": "record", "every": "60", "args": '{"n": 1}',
            "enabled": "on", "csrf": csrf}
    for field, value, fragment in [
        ("queue", "bad queue", "queue name &#39;bad queue&#39; is invalid"),
        ("queue", "\x1b[31mred", "queue name &#39;\\x1b[31mred&#39; is invalid"),
        ("priority", str(10**20), "priority must be a whole number from -2147483648"),
        ("every", "1e300", "every must be a finite number of seconds from 1 to 3162240000"),
        ("misfire_grace", "1e300", "misfire_grace must be a finite number of seconds"),
        ("jitter", "1e300", "jitter must be a finite number of seconds"),
    ]:
        for path in ("/schedules", "/schedules/org-1/update"):
            answer = web.post(path, data={**form, field: value}, follow_redirects=False)
            assert answer.status_code == 400, (path, field, answer.status_code)
            error = re.search(r'id="form-error">([^<]*)<', answer.text)
            assert error is not None and fragment in error.group(1), (path, field, answer.text)
            assert value.replace("\x1b", "") in answer.text.replace("\x1b", "")  # input kept
    assert stored(app) == before


# a stored schedule no check would pass -----------------------------------------------------------

def store_raw(app: oncely_lib.App, name: str, task: str, definition: dict[str, Any],
              origin: str = "dynamic") -> None:
    """A definition written straight into the store, past every check (as an older release, or
    a hand-written INSERT, would have)."""
    spec = {"name": name, "task": task, **definition}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    app.store.schedule_upsert(ScheduleUpsert(name, task, spec, digest, app.clock.now(), origin))


UNFIREABLE = {  # name: the stored definition
    "huge-every": {"every": 1e300},
    "huge-grace": {"every": 60, "misfire_grace": 1e300},
    "huge-jitter": {"every": 1e300, "jitter": 1e299},
    "huge-priority": {"every": 1, "priority": 10**20, "args": {"n": 1}},
    "red-queue": {"every": 1, "queue": "\x1b[31mred", "args": {"n": 1}},
    "long-queue": {"every": 1, "queue": "q" * 9000, "args": {"n": 1}},
    "text-every": {"every": "soon"},
    "old-key": {"every": 1, "colour": "blue"},
}


def test_a_stored_schedule_no_worker_can_fire_stops_nothing_else(any_url: str) -> None:
    clock = oncely_lib.FrozenClock(START)
    app = open_app(any_url, clock)

    @app.task(name="per_org", concurrency_key="org:{org_id}")
    def per_org(ctx: oncely_lib.JobContext, org_id: int) -> None:
        return None

    app.schedule("good", "record", every=1, args={"n": 1})
    app.register_schedules()
    for name, definition in UNFIREABLE.items():
        store_raw(app, name, "record", definition)
    # valid as stored, but without the argument its task's handler (and key) needs
    store_raw(app, "keyless", "per_org", {"every": 1})
    store_raw(app, "renamed-arg", "record", {"every": 1, "args": {"count": 1}})  # it takes n
    reported: list[tuple[str, str]] = []
    app.events.subscribe(lambda e: reported.append((e.fields["schedule"], e.fields["error"])),
                         names={"schedule.invalid"})
    enqueuer = SlotEnqueuer(app.runtime)
    for _ in range(6):
        clock.advance(1)
        enqueuer.run_once()
    good = app.store.job_list(JobFilter(schedule="good", limit=100))
    assert len(good) == 6  # one job per second, as if nothing else were stored
    fails_to_fire = [*UNFIREABLE, "keyless", "renamed-arg"]
    assert sorted(name for name, _ in reported) == sorted(fails_to_fire)  # once each
    errors = dict(reported)
    assert "every must be a finite number of seconds" in errors["huge-every"]
    assert "priority must be a whole number" in errors["huge-priority"]
    assert "queue name '\\x1b[31mred' is invalid" in errors["red-queue"]
    assert "unknown spec keys: colour" in errors["old-key"]
    assert "argument 'org_id' missing (the handler takes org_id)" in errors["keyless"]
    assert "the handler takes no argument 'count'; argument 'n' missing" in errors["renamed-arg"]
    for name in fails_to_fire:
        assert app.store.job_list(JobFilter(schedule=name, limit=10)) == []
    # a reported schedule is kept in its history, so whoever looks next sees why
    history = readmodel.schedule_history(app.store, "huge-every")
    assert [h["event"] for h in history] == ["schedule.invalid"]

    # every reader shows them, none fails
    rows = {r["name"]: r for r in readmodel.schedules_overview(app.store, clock.now())}
    for name in UNFIREABLE:
        assert rows[name]["state"] == "invalid" and rows[name]["next_slot"] is None
        assert rows[name]["trigger"].startswith("invalid: schedule ")
    assert rows["good"]["state"] == rows["keyless"]["state"] == "active"  # tasks unknown here
    # a reader that knows the app's tasks shows the schedules they refuse as invalid, and why
    rows = {r["name"]: r for r in readmodel.schedules_overview(app.store, clock.now(),
                                                               tasks=app.tasks)}
    assert rows["good"]["state"] == "active"
    for name, task in (("keyless", "per_org"), ("renamed-arg", "record")):
        assert rows[name]["state"] == "invalid" and rows[name]["next_slot"] is None
        assert rows[name]["invalid"].startswith(f"task {task} refuses its slots: ")
    assert "argument 'n' missing" in rows["renamed-arg"]["invalid"]
    findings = {f.check: f for f in app.doctor().findings}
    for name in UNFIREABLE:
        assert findings[f"schedule:{name}"].severity == "problem"
        assert "is invalid, so no worker fires it" in findings[f"schedule:{name}"].summary
    assert "schedules update huge-every" in findings["schedule:huge-every"].advice
    for name in ("keyless", "renamed-arg"):  # valid definitions whose slots the task refuses
        assert findings[f"schedule:{name}"].severity == "problem"
        assert "refuses its slots" in findings[f"schedule:{name}"].summary
    assert "argument 'n' missing" in findings["schedule:renamed-arg"].evidence[0]
    assert "schedule:good" not in findings

    web = TestClient(create_app(app, TOKEN), base_url="http://127.0.0.1:8700",
                     raise_server_exceptions=False)
    for path in ["/", "/schedules", "/api/schedules", "/api/schedules/rates", "/api/doctor",
                 "/api/overview", *(f"/schedules/{n}" for n in UNFIREABLE),
                 *(f"/api/schedules/{n}" for n in UNFIREABLE),
                 *(f"/api/schedules/{n}/timeline" for n in UNFIREABLE)]:
        answer = web.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    page = web.get("/schedules/red-queue").text
    assert 'id="schedule-invalid"' in page and "\x1b" not in page
    assert web.get("/api/schedules/huge-every").json()["state"] == "invalid"
    listed_web = {row["name"]: row["state"] for row in web.get("/api/schedules").json()}
    assert listed_web["keyless"] == listed_web["renamed-arg"] == "invalid"
    assert listed_web["good"] == "active"
    assert web.get("/api/schedules/renamed-arg").json()["state"] == "invalid"
    assert web.get("/api/schedules/huge-every/timeline").json()["buckets"] == []
    doctor = web.get("/api/doctor").json()
    assert {f"schedule:{n}" for n in UNFIREABLE} <= {f["check"] for f in doctor["findings"]}

    # the command line lists them; acting on one that needs its definition is one line
    cli = ["--app", APP, "--database-url", any_url]
    listed = oncely(*cli, "--json", "schedules")
    assert listed.returncode == 0, listed.stderr
    states = {r["name"]: r["state"] for r in json.loads(listed.stdout)}
    assert all(states[name] == "invalid" for name in UNFIREABLE)
    assert states["renamed-arg"] == "invalid" and states["good"] == "active"  # APP has record
    shown = oncely(*cli, "schedules")
    assert shown.returncode == 0 and "\x1b" not in shown.stdout, shown.stderr
    one_line_error(oncely(*cli, "schedules", "trigger", "huge-every"), 2,
                   "every must be a finite number of seconds")
    doctor_cli = oncely(*cli, "doctor")
    assert doctor_cli.returncode == 1 and "Traceback" not in doctor_cli.stderr
    assert "schedule huge-priority: its stored definition (revision 1) is invalid" in \
        doctor_cli.stdout

    # operators can still stop, fix or remove one
    assert oncely(*cli, "schedules", "pause", "huge-every").returncode == 0
    one_line_error(oncely(*cli, "schedules", "update", "huge-priority", "--every", "2"), 2,
                   "priority must be a whole number")  # the stored priority is still wrong …
    app.update_schedule("huge-priority", priority=5)  # … until it is changed too
    assert oncely(*cli, "schedules", "delete", "red-queue").returncode == 0
    for _ in range(2):
        clock.advance(1)
        enqueuer.run_once()
    jobs = app.store.job_list(JobFilter(schedule="huge-priority", limit=10))
    assert jobs and {job.priority for job in jobs} == {5}
    assert app.store.schedule_get("red-queue") is None
    assert app.store.schedule_get("huge-every").paused
    app.close()


@pytest.mark.parametrize("stored_spec", [
    [], "text", {"name": "x"}, {"name": 5, "task": "record", "every": 1},
    {"name": "x", "task": "record", "every": 1, "args": [1, 2]},
    {"name": "x", "task": "record", "every": 1, "args": {"n": {"$": [1e308, None]}}, "anchor": 3},
    {"name": "x", "task": "record", "cron": 5}, {"name": "x", "task": "record", "every": 1,
                                                  "anchor": "0001-01-01T00:00:00+14:00"},
    {"name": "x", "task": "record", "every": 1, "overlap": ["skip"]},
    {"name": "x", "task": "record", "every": 1, "catch_up_limit": 10**30},
])
def test_reading_back_any_stored_row_is_a_definition_or_invalid(stored_spec: Any) -> None:
    with pytest.raises(InvalidSchedule):
        ScheduleSpec.from_spec_dict(stored_spec)


# operators' reasons --------------------------------------------------------------------------

BAD_REASONS = ["a\x00b", "\ud800", "\udcff", "r" * 1001, 42, ["why"]]


def test_reasons_are_checked_alike_on_every_path(app: oncely_lib.App, any_url: str) -> None:
    job = app.enqueue_job("record", {"n": 1}, delay=3600).job
    for reason in BAD_REASONS:
        for act in (lambda r: app.pause_queue("default", r),
                    lambda r: app.pause_schedule("org-1", r),
                    lambda r: app.cancel_job(job.id, r)):
            with pytest.raises(ConfigError, match="reason"):
                act(reason)

    cli = ["--app", APP, "--database-url", any_url]
    for reason, fragment in [("\udcff", "--reason contains a NUL character or a lone surrogate"),
                             ("bad \udcfe\udcff bytes", "--reason contains a NUL character"),
                             ("r" * 1001, "reason is too long: at most 1000 characters")]:
        for command in (["queues", "pause", "default"], ["schedules", "pause", "org-1"],
                        ["jobs", "cancel", str(job.id)]):
            one_line_error(oncely(*cli, *command, "--reason", reason), 2, fragment)

    web = TestClient(create_app(app, TOKEN), base_url="http://127.0.0.1:8700",
                     raise_server_exceptions=False)
    for reason in BAD_REASONS:
        answer = web.post("/api/schedules/org-1/pause", headers=AUTH,
                          content=json.dumps({"reason": reason}))
        assert answer.status_code == 400 and "reason" in answer.json()["error"], answer.text
    web.post("/login", data={"token": TOKEN}, follow_redirects=False)
    csrf = re.search(r'name="csrf" value="([^"]+)"', web.get("/queues").text).group(1)
    for path, form in [("/queues/default/pause", {"reason": "a\x00b"}),
                       ("/schedules/org-1/pause", {"reason": "a\x00b"}),
                       ("/jobs/cancel", {"reason": "a\x00b", "job": str(job.id)})]:
        answer = web.post(path, data={**form, "csrf": csrf}, follow_redirects=False)
        if path == "/jobs/cancel":  # a selection: each refusal is counted, the page says so
            assert answer.headers["location"].endswith("count=0&left=1"), answer.text
        else:
            assert 400 <= answer.status_code < 500, (path, answer.status_code)
            assert "NUL character" in answer.text
    # nothing was paused or cancelled, and no reason reached the store
    assert not app.store.schedule_get("org-1").paused
    assert app.store.job_get(job.id).state == "scheduled"
    assert not [c for c in app.store.control_list() if c.paused]
    assert not [e for e in readmodel.fleet_events(app.store, 100)
                if e["name"] in ("queue.paused", "schedule.paused", "job.cancel_requested")]
    # a good reason still goes through, on both stores
    app.pause_schedule("org-1", "maintenance (é, \U0001f600)", by="test")
    assert app.store.schedule_get("org-1").paused_reason == "maintenance (é, \U0001f600)"

