"""Random input at every edge (hypothesis): strings, numbers and undecodable bytes at every option
of every short-lived command, and at every dashboard page and API route (path, query, form,
cookie, headers). The command answers 0, or one line with a documented exit code; the dashboard
answers below 500. Never a traceback.

Example counts are kept small so each sweep takes seconds; a failure hypothesis finds is printed
as the smallest argv or request that shows it.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import open_basic_app

from oncely.cli import main
from oncely.schedules import ScheduleSpec
from oncely.web.app import create_app

with warnings.catch_warnings():  # Starlette asks for httpx2; httpx serves the test client fine
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

DOCUMENTED_EXITS = {0, 1, 2, 3, 4, 5}
TOKEN = "sweep-token-9d8c7b6a5f"
SWEEP = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])

EDGE_VALUES = ["", " ", "0", "-1", "1", "nan", "inf", "-inf", "1e300", "1e-300", str(2**63),
               str(2**63 - 1), "9" * 30, "\x00", "a\x00b", "\x1b[31m", "[/bold]", "{}", "[]",
               '{"a": "\\u0000"}', '{"a": "\\ud800"}', "[" * 2000, "é", "\U0001f600", "\udcff",
               "%00", "../../etc/passwd", "a" * 5000, "sqlite:///", "postgresql://"]

values = st.one_of(
    st.sampled_from(EDGE_VALUES),
    st.text(max_size=40),
    st.binary(max_size=24).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    st.integers().map(str),
    st.floats().map(str),
)

# Every short-lived command with its options and arguments (worker and dashboard run until
# stopped; their parsing is swept through the checks they share, and tested on their own).
COMMANDS: list[tuple[list[str], list[str], int]] = [
    # (command words, options taking a value, positional arguments)
    (["enqueue"], ["--args", "--delay", "--priority", "--unique-key", "--queue"], 1),
    (["jobs", "list"], ["--state", "--queue", "--task", "--schedule", "--limit"], 0),
    (["jobs", "show"], [], 1),
    (["jobs", "retry"], ["--queue", "--task"], 1),
    (["jobs", "cancel"], ["--reason"], 1),
    (["anomalies"], ["--limit"], 0),
    (["anomalies", "resolve"], [], 1),
    (["ledger"], ["--limit"], 1),
    (["queues", "pause"], ["--reason"], 1),
    (["schedules", "pause"], ["--reason"], 1),
    (["schedules", "trigger"], [], 1),
    (["schedules", "create"], ["--task", "--cron", "--every", "--args", "--tz", "--queue",
                               "--misfire-grace"], 1),
    (["schedules", "update"], ["--cron", "--every", "--args", "--tz", "--queue",
                               "--misfire-grace"], 1),
    (["queues", "resume"], [], 1),
    (["queues", "list"], [], 0),
    (["schedules"], [], 0),
    (["leases"], [], 0),
    (["workers"], [], 0),
]


@st.composite
def command_lines(draw: Callable[..., Any]) -> list[str]:
    words, options, positional = draw(st.sampled_from(COMMANDS))
    argv = list(words)
    for option in options:
        if draw(st.booleans()):
            argv += [option, draw(values)]
    argv += [draw(values) for _ in range(positional)]
    if words == ["enqueue"] and draw(st.booleans()):
        argv[1:2] = ["record"]  # a real task, so the options are what is judged
    if words[0] == "schedules" and draw(st.booleans()):  # a real schedule and task
        argv[-1] = "org-1"
        if "--task" in argv:
            argv[argv.index("--task") + 1] = "record"
    return argv


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_one_line(argv: list[str], code: int, stderr: str) -> None:
    assert "Traceback" not in stderr, (argv, stderr)
    assert code in DOCUMENTED_EXITS, (argv, code, stderr)
    assert code != 3, (argv, stderr)  # input is never taken for a store failure
    if code not in (0, 1):
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("oncely: error: "), (argv, stderr)


@pytest.fixture
def sweep_app(any_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module ``sweep_app_<n>`` in the working directory with the basic tasks on ``any_url``,
    holding one job and one dynamic schedule (org-1); returns its --app path."""
    name = f"sweep_app_{abs(hash(any_url)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        "import oncely\nfrom tests.apps import basic\n"
        f"app = oncely.App({any_url!r})\napp.tasks = dict(basic.app.tasks)\n")
    monkeypatch.chdir(tmp_path)
    app = open_basic_app(any_url)
    app.enqueue_job("record", {"n": 1})
    app.create_schedule("org-1", "record", every=60, args={"n": 1})
    app.close()
    return f"{name}:app"


def test_random_values_at_every_command_option(sweep_app: str) -> None:
    @SWEEP
    @given(command_lines())
    def sweep(argv: list[str]) -> None:
        full = ["--app", sweep_app, *argv]
        code, _, stderr = run(full)
        assert_one_line(full, code, stderr)

    sweep()


@pytest.mark.parametrize("option", ["--database-url", "--app", "--log-level", "--log-format"])
def test_random_values_at_every_global_option(option: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # No URL may send traffic off this machine: random hosts are not tried.
    urls = st.one_of(values, values.map(lambda v: "sqlite:///" + v),
                     values.map(lambda v: "mysql://root:pw@" + v),
                     values.map(lambda v: "postgresql://u:pw@127.0.0.1:1/x?" + v))

    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(urls if option == "--database-url" else values)
    def sweep(value: str) -> None:
        if option == "--database-url" and "://" in value and not value.startswith(
                ("sqlite:", "mysql:", "postgresql://u:pw@127.0.0.1:1/")):
            return
        argv = [option, value, "jobs", "list"]
        code, _, stderr = run(argv)
        assert_one_line(argv, code, stderr)
        assert "pw@" not in stderr, stderr  # the password is masked in whatever is said

    sweep()


def test_the_dashboard_token_and_host_options_are_checked_before_serving(sweep_app: str) -> None:
    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(st.one_of(st.text(max_size=15), st.sampled_from(["", "short", "a b" * 8, "é" * 16])))
    def sweep(token: str) -> None:
        argv = ["--app", sweep_app, "dashboard", "--token", token, "--host", "127.0.0.1"]
        code, _, stderr = run(argv)
        assert_one_line(argv, code, stderr)
        assert code == 2

    sweep()


# the dashboard ----------------------------------------------------------------------------------

segments = values.map(lambda v: quote(v.encode("utf-8", "surrogateescape"), safe=""))
PAGES = ["/", "/jobs", "/jobs/{}", "/schedules", "/schedules/{}", "/workers", "/anomalies",
         "/login", "/api/overview", "/api/queues", "/api/jobs", "/api/jobs/{}",
         "/api/schedules", "/api/schedules/rates", "/api/schedules/{}",
         "/api/schedules/{}/timeline", "/api/workers", "/api/leases", "/api/anomalies",
         "/api/events", "/api/doctor", "/api/openapi.json", "/metrics", "/healthz",
         "/api/orgs/{}/ingestion"]  # an installed add-on's route (oncely_billing)
ACTIONS = ["/jobs/{}/retry", "/jobs/{}/cancel", "/anomalies/{}/resolve", "/api/jobs/{}/retry",
           "/api/jobs/{}/cancel", "/login", "/logout", "/schedules", "/schedules/{}/update",
           "/schedules/{}/pause", "/schedules/{}/backfill", "/queues/{}/pause"]
QUERY_KEYS = ["state", "queue", "task", "schedule", "limit", "before", "buckets", "all", "done"]


@st.composite
def requests(draw: Callable[..., Any]) -> dict[str, Any]:
    post = draw(st.booleans())
    path = draw(st.sampled_from(ACTIONS if post else PAGES))
    if "{}" in path:
        path = path.replace("{}", draw(st.one_of(st.integers(0, 2**70).map(str), segments)) or "x")
    keys = draw(st.sets(st.sampled_from(QUERY_KEYS), max_size=4))
    query = "&".join(f"{key}={draw(segments)}" for key in sorted(keys))
    path = f"{path}?{query}" if query else path
    headers: dict[str, Any] = {}
    if draw(st.booleans()):
        cookie = draw(values).encode("utf-8", "surrogateescape").replace(b";", b"")
        headers["cookie"] = b"oncely_session=" + cookie.replace(b"\r", b"").replace(b"\n", b"")
    if draw(st.booleans()):
        headers["authorization"] = "Bearer " + draw(segments)
    form = {key: draw(values) for key in draw(st.sets(st.sampled_from(["csrf", "token"])))}
    form = {key: value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            for key, value in form.items()}
    return {"method": "POST" if post else "GET", "url": path, "headers": headers,
            "data": form if post else None}


def test_random_requests_at_every_route(sweep_app: str, any_url: str) -> None:
    """Signed in, so actions and their CSRF checks are reached too."""
    app = open_basic_app(any_url)
    web_app = create_app(app, TOKEN)
    web = TestClient(web_app, base_url="http://127.0.0.1:8700", raise_server_exceptions=False)
    assert web.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303

    @settings(SWEEP, max_examples=80)
    @given(requests())
    def sweep(request: dict[str, Any]) -> None:
        web_app.state.dashboard.guard.throttle.failed = lambda client: None  # keep guessing
        answer = web.request(**{k: v for k, v in request.items() if v is not None},
                             follow_redirects=False)
        assert answer.status_code < 500, (request, answer.status_code, answer.text[:300])
        assert "Traceback" not in answer.text

    try:
        sweep()
    finally:
        app.close()


SCHEDULE_FIELDS = ["name", "task", "cron", "every", "tz", "args", "overlap", "catch_up",
                   "catch_up_limit", "misfire_grace", "queue", "priority", "jitter", "enabled"]


def test_random_schedule_forms(any_url: str) -> None:
    """The schedule form's every field with random values, signed in with a valid CSRF token,
    to create a schedule and to edit a dynamic one: a redirect (stored) or the form again with
    its reason (400), never a 500; the stored definitions all parse."""
    app = open_basic_app(any_url)
    app.create_schedule("org-1", "record", every=60, args={"n": 1})
    web = TestClient(create_app(app, TOKEN), base_url="http://127.0.0.1:8700",
                     raise_server_exceptions=False)
    web.post("/login", data={"token": TOKEN}, follow_redirects=False)
    found = re.search(r'name="csrf" value="([^"]+)"', web.get("/schedules").text)
    assert found is not None
    valid = st.fixed_dictionaries({
        "name": st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True), "task": st.just("record"),
        "every": st.just("30"), "args": st.just('{"n": 2}'), "enabled": st.just("on")})
    changes = st.dictionaries(st.sampled_from(SCHEDULE_FIELDS), st.one_of(
        values, st.sampled_from(["noop", "*/5 * * * *", "", "Europe/Paris", '{"api_key": "***"}',
                                 "buffer_one", "all", "none", "0.5", "100"])), max_size=3)
    fields = st.builds(lambda base, more: {**base, **more}, valid, changes)

    seen: dict[int, int] = {}

    @settings(SWEEP, max_examples=60)
    @given(fields, st.sampled_from(["/schedules", "/schedules/org-1/update"]))
    def sweep(form: dict[str, str], path: str) -> None:
        data = {key: value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                for key, value in form.items()}
        answer = web.post(path, data={**data, "csrf": found.group(1)}, follow_redirects=False)
        assert answer.status_code in (303, 400), (form, answer.status_code, answer.text[:300])
        assert "Traceback" not in answer.text
        if answer.status_code == 400:
            assert 'id="form-error"' in answer.text
        seen[answer.status_code] = seen.get(answer.status_code, 0) + 1

    try:
        sweep()
        assert seen.get(303) and seen.get(400), seen  # both ways were reached
        for row in app.store.schedule_list():
            ScheduleSpec.from_spec_dict(row.spec)
    finally:
        app.close()
