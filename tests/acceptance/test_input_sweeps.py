"""Random input at every edge (hypothesis): strings, numbers and undecodable bytes at every option
of every short-lived command (the dashboard's too, on a port already taken so it never serves,
and ``migrate --to``), and at every dashboard page and API route (path, query, form, cookie,
headers); forms signed in with a valid CSRF token and API actions with the bearer token and
random JSON bodies, so the handlers behind the guard are reached, and every page read again
after. The command answers 0, or one line with a documented exit code; the dashboard answers
below 500. Never a traceback. (``oncely metering`` and the billing routes:
``tests/billing/test_input_sweeps.py``.)

Example counts are kept small so each sweep takes seconds, and the examples are the same on
every run (``derandomize``); a failure hypothesis finds is printed as the smallest argv or
request that shows it. Command lines that once showed a defect run first in their sweep
(``PINNED``).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
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

names = st.one_of(st.sampled_from(["org-1", "declared", "default", "record", "noop"]), values)
fresh_names = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)
instants = st.one_of(
    values,
    st.datetimes(timezones=st.sampled_from([None, UTC])).map(lambda t: t.isoformat()),
    st.sampled_from(["2026-01-01T00:00:00", "2026-01-01T05:00:00+00:00", "0001-01-01T00:00:00",
                     "9999-12-31T23:59:59+00:00", "2026-01-01", "2026-01-01T00:00:00-23:59"]))
numbers = st.one_of(values, st.sampled_from(["60", "0.001", "3600", "1e9", "1e300", "86400.5",
                                             "-60", "nan", "inf"]))
json_objects = st.one_of(values, st.sampled_from(['{"n": 2}', '{"n": "x"}', '{"m": 1}', '{}']))
reasons = st.one_of(values, st.sampled_from(["a\x00b", "\udc80", "\x1b[2J", "why " * 2000]))


@dataclass(frozen=True)
class Command:
    """A short-lived command: its words, its options taking a value (each with its values), its
    flags and its positional arguments."""

    words: tuple[str, ...]
    options: tuple[str, ...] = ()
    positional: int = 0
    flags: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()  # words always given after the command's (a --yes)
    option_values: tuple[tuple[str, Any], ...] = ()
    # Options given valid values, up to two of them then changed: so the random value is judged
    # past every other check, down to what is stored and read back.
    baseline: tuple[tuple[str, str], ...] = ()
    arguments: Any = names  # the values of its positional arguments

    def values_of(self, option: str) -> Any:
        return dict(self.option_values).get(option, names if option in (
            "--queue", "--task", "--schedule") else values)


DEFINITION = ("--cron", "--every", "--args", "--tz", "--overlap", "--catch-up", "--queue",
              "--misfire-grace")
DEFINITION_VALUES = (("--cron", st.one_of(values, st.sampled_from(
    ["*/5 * * * *", "0 0 31 2 *", "* * * * * *", "@daily", "61 * * * *"]))),
    ("--every", numbers), ("--misfire-grace", numbers), ("--args", json_objects),
    ("--queue", st.one_of(names, st.sampled_from(["a\x00b", "a b", "\x1b[31m", "q" * 300]))),
    ("--tz", st.one_of(values, st.sampled_from(["Europe/Paris", "UTC", "Mars/Olympus"]))),
    ("--overlap", st.one_of(values, st.just("buffer_one"))),
    ("--catch-up", st.one_of(values, st.just("all"))))

VALID = (("--every", "3600"), ("--tz", "UTC"), ("--overlap", "skip"), ("--catch-up", "latest"),
         ("--queue", "default"), ("--misfire-grace", "60"))

# Every short-lived command (worker and dashboard run until stopped: the dashboard's options are
# swept below, against a port already taken, so it never serves).
COMMANDS = {
    "jobs": [
        Command(("enqueue",), ("--args", "--delay", "--priority", "--unique-key", "--queue"), 1),
        Command(("jobs", "list"), ("--state", "--queue", "--task", "--schedule", "--limit")),
        Command(("jobs", "show"), positional=1),
        Command(("jobs", "retry"), ("--queue", "--task"), 1, ("--all",)),
        Command(("jobs", "cancel"), ("--reason",), 1),
        Command(("anomalies",), ("--limit",), flags=("--all",)),
        Command(("anomalies", "resolve"), positional=1),
        Command(("anomalies", "check")),
        Command(("ledger",), ("--limit",), 1),
        Command(("queues", "resume"), positional=1),
        Command(("queues", "list")),
        Command(("queues",)),
        Command(("leases",)),
        Command(("workers",)),
        Command(("doctor",), flags=("--json",)),
    ],
    "schedules": [
        Command(("schedules",)),
        Command(("schedules", "history"), ("--limit",), 1),
        Command(("schedules", "resume"), positional=1),
        Command(("schedules", "trigger"), positional=1),
        Command(("schedules", "backfill"), ("--from", "--to"), 1, ("--yes",),
                option_values=(("--from", instants), ("--to", instants))),
        Command(("schedules", "delete"), positional=1, flags=("--force",)),
        Command(("schedules", "apply"), positional=1),
    ],
    "schedule definitions": [  # and what reads the definitions stored
        Command(("schedules", "create"), ("--task", *DEFINITION), 1, ("--enabled", "--disabled"),
                option_values=DEFINITION_VALUES, baseline=(("--task", "noop"), *VALID),
                arguments=st.one_of(fresh_names, names)),
        Command(("schedules", "update"), DEFINITION, 1, ("--enabled", "--disabled"),
                option_values=DEFINITION_VALUES, baseline=VALID[:1],
                arguments=st.one_of(st.just("org-1"), names)),
        Command(("schedules",)),
        Command(("schedules", "trigger"), positional=1),
    ],
    "reasons": [  # free text stored with an operator action
        Command(("queues", "pause"), ("--reason",), 1, option_values=(("--reason", reasons),)),
        Command(("schedules", "pause"), ("--reason",), 1, option_values=(("--reason", reasons),)),
        Command(("jobs", "cancel"), ("--reason",), 1, option_values=(("--reason", reasons),)),
    ],
}


@st.composite
def command_lines(draw: Callable[..., Any], commands: list[Command]) -> list[str]:
    command = draw(st.sampled_from(commands))
    argv = [*command.words, *command.fixed]
    chosen = dict(command.baseline)
    if chosen:
        for option in draw(st.lists(st.sampled_from(command.options), max_size=2, unique=True)):
            chosen[option] = draw(command.values_of(option))
    else:
        chosen = {option: draw(command.values_of(option)) for option in command.options
                 if draw(st.booleans())}
    for option, value in chosen.items():
        argv += [option, value]
    argv += [flag for flag in command.flags if draw(st.booleans())]
    argv += [draw(command.arguments) for _ in range(command.positional)]
    if command.words == ("enqueue",) and draw(st.booleans()):
        argv[1:2] = ["record"]  # a real task, so the options are what is judged
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


SWEEP_APP = """\
import oncely
from tests.apps import basic

app = oncely.App({url!r})
app.tasks = dict(basic.app.tasks)
app.schedule("declared", "noop", every=3600)
"""


@pytest.fixture
def sweep_app(any_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module ``sweep_app_<n>`` in the working directory with the basic tasks on ``any_url``
    (and a declared schedule), holding one job and a dynamic schedule ``org-1``; returns its
    --app path."""
    name = f"sweep_app_{abs(hash(any_url)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(SWEEP_APP.format(url=any_url))
    monkeypatch.chdir(tmp_path)
    app = open_basic_app(any_url)
    app.enqueue_job("record", {"n": 1})
    app.create_schedule("org-1", "record", every=3600, args={"n": 1})
    app.close()
    return f"{name}:app"


def sweep_commands(app_path: str, commands: list[Command], examples: int,
                   shrink: bool = True, pinned: tuple[list[str], ...] = ()) -> None:
    """Random command lines of ``commands`` (after the ``pinned`` ones, in order)."""
    def sweep(argv: list[str]) -> None:
        full = ["--app", app_path, *argv]
        code, _, stderr = run(full)
        assert_one_line(full, code, stderr)

    for argv in reversed(pinned):  # the decorator nearest the function runs first
        sweep = example(argv)(sweep)
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    settings(SWEEP, max_examples=examples, phases=phases)(given(command_lines(commands))(
        sweep))()


# Command lines run before the random ones: defects found here once, kept as examples.
PINNED = {"schedule definitions": (["schedules", "update", "--every", "1e300", "org-1"],
                                   ["schedules"])}


@pytest.mark.parametrize("group, examples", [
    ("jobs", 90), ("schedules", 50),
    ("schedule definitions", 60),
    ("reasons", 30),
])
def test_random_values_at_every_command_option(sweep_app: str, group: str,
                                               examples: int) -> None:
    sweep_commands(sweep_app, COMMANDS[group], examples, shrink=True,
                   pinned=PINNED.get(group, ()))


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


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something already listens on (IPv4 loopback)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def could_listen(host: str, port: int) -> bool:
    """Whether ``oncely dashboard`` could listen on ``host:port`` (its own check, done first)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError, ValueError):
        return False
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


hosts = st.one_of(values, st.sampled_from(
    ["127.0.0.1", "0.0.0.0", "localhost", "::1", "[::1]:8700", "jobs.example.com:443", "*",
     "*.example.com", "a*b", "10.0.0.5", "https://jobs.example.com", "fd00::5"]))


@st.composite
def dashboard_lines(draw: Callable[..., Any]) -> list[str]:
    argv = ["dashboard"]
    if draw(st.booleans()):
        argv += ["--host", draw(hosts)]
    for _ in range(draw(st.integers(0, 3))):
        argv += ["--allowed-host", draw(hosts)]
    if draw(st.booleans()):
        argv += ["--auth", draw(st.one_of(values, st.sampled_from(["reads", "actions"])))]
    if draw(st.booleans()):
        argv += ["--token", draw(st.one_of(values, st.just(TOKEN), st.just("é" * 16)))]
    return argv


def test_random_values_at_every_dashboard_option(sweep_app: str, taken_port: int) -> None:
    """Every option is checked before the dashboard serves: on a port already taken, every
    command line ends in one line and exit 2 — a bad option named, or the port refused. A
    --host it could listen on is swapped for the loopback, so nothing is ever served."""
    @settings(SWEEP, max_examples=40)
    @given(dashboard_lines())
    def sweep(argv: list[str]) -> None:
        if "--host" in argv and could_listen(argv[argv.index("--host") + 1], taken_port):
            argv[argv.index("--host") + 1] = "127.0.0.1"
        full = ["--app", sweep_app, *argv, "--port", str(taken_port)]
        code, _, stderr = run(full)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert "Traceback" not in stderr and code == 2, (full, code, stderr)
        assert lines[-1].startswith("oncely: error: "), (full, stderr)
        assert all(" WARNING " in line for line in lines[:-1]), (full, stderr)

    sweep()


def test_random_migration_targets(sweep_app: str) -> None:
    """``migrate --to`` and ``metering migrate --to`` (with ``--status``): a version either goes,
    or one line says why; the schema is put back after each."""
    @settings(SWEEP, max_examples=20)
    @given(st.sampled_from([["migrate"], ["metering", "migrate"]]),
           st.one_of(st.integers(0, 12).map(str), values), st.booleans())
    def sweep(words: list[str], target: str, status: bool) -> None:
        full = ["--app", sweep_app, *words, "--to", target, *(["--status"] if status else [])]
        code, _, stderr = run(full)
        assert_one_line(full, code, stderr)
        if code == 0:
            restored = run(["--app", sweep_app, "metering", "migrate"])
            assert restored[0] == 0, restored

    sweep()


# the dashboard ----------------------------------------------------------------------------------

segments = values.map(lambda v: quote(v.encode("utf-8", "surrogateescape"), safe=""))
PAGES = ["/", "/jobs", "/jobs/{}", "/schedules", "/schedules/{}", "/workers", "/anomalies",
         "/queues", "/login", "/api/overview", "/api/queues", "/api/jobs", "/api/jobs/{}",
         "/api/schedules", "/api/schedules/rates", "/api/schedules/{}",
         "/api/schedules/{}/timeline", "/api/schedules/{}/history", "/api/workers",
         "/api/leases", "/api/anomalies", "/api/events", "/api/doctor", "/api/openapi.json",
         "/metrics", "/healthz",
         # an installed add-on's routes (oncely_billing; swept on a billing app in tests/billing)
         "/api/orgs/{}/ingestion", "/billing", "/metrics/billing", "/api/billing/metrics"]
FORMS = ["/jobs/{}/retry", "/jobs/{}/cancel", "/jobs/cancel", "/anomalies/{}/resolve",
         "/schedules/{}/pause", "/schedules/{}/resume", "/schedules/{}/trigger",
         "/schedules/{}/delete", "/schedules/{}/backfill", "/queues/{}/pause",
         "/queues/{}/resume", "/queues/retry-failed"]
API_ACTIONS = [("POST", "/api/jobs/{}/retry"), ("POST", "/api/jobs/{}/cancel"),
               ("POST", "/api/schedules"), ("PATCH", "/api/schedules/{}"),
               ("DELETE", "/api/schedules/{}"), *(("POST", f"/api/schedules/{{}}/{verb}")
                                                  for verb in ("pause", "resume", "trigger",
                                                               "backfill"))]
ACTIONS = [*FORMS, *(path for _, path in API_ACTIONS), "/login", "/logout", "/schedules",
           "/schedules/{}/update"]
QUERY_KEYS = ["state", "queue", "task", "schedule", "limit", "before", "buckets", "all", "done"]


@st.composite
def requests(draw: Callable[..., Any]) -> dict[str, Any]:
    post = draw(st.booleans())
    path = draw(st.sampled_from(ACTIONS if post else PAGES))
    if "{}" in path:
        path = path.replace("{}", draw(st.one_of(st.integers(0, 2**70).map(str), segments)) or "x")
    keys = draw(st.lists(st.sampled_from(QUERY_KEYS), max_size=4, unique=True))
    query = "&".join(f"{key}={draw(segments)}" for key in sorted(keys))
    path = f"{path}?{query}" if query else path
    headers: dict[str, Any] = {}
    if draw(st.booleans()):
        cookie = draw(values).encode("utf-8", "surrogateescape").replace(b";", b"")
        headers["cookie"] = b"oncely_session=" + cookie.replace(b"\r", b"").replace(b"\n", b"")
    if draw(st.booleans()):
        headers["authorization"] = "Bearer " + draw(segments)
    form = {key: draw(values) for key in draw(st.lists(st.sampled_from(["csrf", "token"]),
                                                        unique=True))}
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

    @settings(SWEEP, max_examples=50)
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


def signed_in(any_url: str) -> tuple[Any, TestClient, str]:
    """The basic app holding a job (1), a failed job (2) and the dynamic schedule ``org-1``, its
    dashboard with a token, and a client signed in as the dashboard tests do: the session
    cookie, and the CSRF token its pages carry."""
    app = open_basic_app(any_url)
    app.enqueue_job("record", {"n": 1})
    failed = app.enqueue_job("record", {"n": 2}).id
    app.cancel_job(failed, "to retry")
    keep_org_1(app)
    web = TestClient(create_app(app, TOKEN), base_url="http://127.0.0.1:8700",
                     raise_server_exceptions=False)
    assert web.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    found = re.search(r'name="csrf" value="([^"]+)"', web.get("/schedules").text)
    assert found is not None
    return app, web, found.group(1)


def keep_org_1(app: Any) -> None:
    """A sweep may delete or pause ``org-1``: it is there, active, for the next example."""
    if app.store.schedule_get("org-1") is None:
        app.create_schedule("org-1", "record", every=3600, args={"n": 1})


form_values = st.one_of(values, instants, st.sampled_from(["1", "2", "on", "default", "record"]))
FORM_FIELDS = ["reason", "queue", "task", "job", "from", "to", "yes", "force"]


def path_of(route: str, draw: Callable[..., Any]) -> str:
    """``route`` with an id or name that exists half the time (job 1 or 2, schedule org-1, the
    default queue), else a random one."""
    if "{}" not in route:
        return route
    if draw(st.booleans()):
        real = ("org-1" if "schedules" in route else "default" if "queues" in route
                else draw(st.sampled_from(["1", "2"])))
        return route.replace("{}", real)
    return route.replace("{}", draw(st.one_of(st.integers(0, 2**70).map(str), segments)) or "x")


@st.composite
def form_posts(draw: Callable[..., Any]) -> tuple[str, list[tuple[str, str]]]:
    path = path_of(draw(st.sampled_from(FORMS)), draw)
    fields = draw(st.lists(st.tuples(st.sampled_from(FORM_FIELDS), form_values), max_size=5))
    if path.endswith("/backfill") and not draw(st.booleans()):  # the fields it needs, often
        fields = [("from", draw(instants)), ("to", draw(instants)), *fields]  # the first counts
    if path == "/jobs/cancel" and not draw(st.booleans()):
        fields = [("job", draw(st.sampled_from(["1", "2"]))), *fields]
    return path, [(key, value.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                  for key, value in fields]


def sweep_then_read_back(app: Any, web: TestClient, sweep: Callable[[], None]) -> None:
    """Run a sweep, then read every page (:func:`after_the_sweep`); the app is closed either
    way."""
    try:
        sweep()
        after_the_sweep(app, web)
    finally:
        app.close()


def after_the_sweep(app: Any, web: TestClient) -> None:
    """Every page and read the sweep's actions touched answers 200 with what they left."""
    names_left = [row.name for row in app.store.schedule_list()]
    for path in ("/", "/jobs", "/queues", "/schedules", "/anomalies", "/workers", "/api/jobs",
                 "/api/queues", "/api/schedules", "/api/schedules/rates", "/api/doctor",
                 *(f"{base}/{quote(name, safe='')}{tail}" for name in names_left
                   for base, tail in (("/schedules", ""), ("/api/schedules", ""),
                                      ("/api/schedules", "/history"),
                                      ("/api/schedules", "/timeline")))):
        answer = web.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])


def test_random_forms_signed_in_with_a_valid_csrf_token(any_url: str) -> None:
    """Every form action reached past its guard (a valid session and CSRF token), with random
    path ids and names and random fields: a redirect, or a 4xx page saying why — never 403
    (the guard is passed) and never a 500. Then every page still answers."""
    app, web, csrf = signed_in(any_url)

    @settings(SWEEP, max_examples=50)
    @given(form_posts())
    def sweep(post: tuple[str, list[tuple[str, str]]]) -> None:
        path, data = post
        answer = web.post(path, content=urlencode([*data, ("csrf", csrf)]),
                          headers={"content-type": "application/x-www-form-urlencoded"},
                          follow_redirects=False)
        assert answer.status_code in (303, 400, 404, 405, 409), (
            path, data, answer.status_code, answer.text[:300])
        assert "Traceback" not in answer.text
        keep_org_1(app)

    sweep_then_read_back(app, web, sweep)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
              instants, st.sampled_from(["record", "noop", "*/5 * * * *", "Europe/Paris",
                                         "default", "buffer_one", "all"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
SCHEDULE_KEYS = ["name", "task", "cron", "every", "tz", "args", "overlap", "catch_up",
                 "catch_up_limit", "misfire_grace", "queue", "priority", "jitter", "enabled",
                 "reason", "from", "to", "yes", "force"]
json_bodies = st.one_of(
    st.dictionaries(st.sampled_from(SCHEDULE_KEYS), json_values, max_size=6).map(json.dumps),
    json_values.map(json.dumps), st.binary(max_size=40).map(lambda raw: raw.decode("latin-1")),
    st.just(""))


def body_for(route: str, draw: Callable[..., Any]) -> str:
    """A JSON body for ``route``: half the time a valid one with up to two members changed to
    random JSON values (so the change is what is judged), else anything."""
    valid: dict[str, Any] = (
        {"name": draw(fresh_names), "task": "noop", "every": 3600} if route == "/api/schedules"
        else {"every": 3600} if route == "/api/schedules/{}"
        else {"from": draw(instants), "to": draw(instants), "yes": draw(st.booleans())}
        if route.endswith("/backfill") else {"reason": "maintenance"} if route.endswith("/pause")
        else {"force": True} if route == "/api/schedules/{}" else {})
    if draw(st.booleans()):
        return str(draw(json_bodies))
    for key in draw(st.lists(st.sampled_from(SCHEDULE_KEYS), max_size=2, unique=True)):
        valid[key] = draw(json_values)
    return json.dumps(valid)


def test_random_json_at_every_api_action(any_url: str) -> None:
    """Every API action with the bearer token and a random JSON (or not JSON) body: 2xx, or a
    4xx with its reason; never a 500. Then every read still answers."""
    app, web, _ = signed_in(any_url)
    bearer = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}

    @settings(SWEEP, max_examples=50)
    @given(st.sampled_from(API_ACTIONS), st.data())
    def sweep(action: tuple[str, str], data: st.DataObject) -> None:
        method, route = action
        path, body = path_of(route, data.draw), body_for(route, data.draw)
        answer = web.request(method, path, content=body.encode("utf-8", "surrogateescape"),
                             headers=bearer)
        assert answer.status_code < 500, (method, path, body, answer.status_code,
                                          answer.text[:300])
        assert answer.status_code not in (401, 403), answer.text  # past the guard
        keep_org_1(app)

    sweep_then_read_back(app, web, sweep)


SCHEDULE_FIELDS = ["name", "task", "cron", "every", "tz", "args", "overlap", "catch_up",
                   "catch_up_limit", "misfire_grace", "queue", "priority", "jitter", "enabled"]


def test_random_schedule_forms(any_url: str) -> None:
    """The schedule form's every field with random values, signed in with a valid CSRF token,
    to create a schedule and to edit a dynamic one: a redirect (stored) or the form again with
    its reason (400), never a 500; the stored definitions all parse, and every schedule page
    shows them."""
    app, web, csrf = signed_in(any_url)
    valid = st.fixed_dictionaries({
        "name": st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True), "task": st.just("record"),
        "every": st.just("30"), "args": st.just('{"n": 2}'), "enabled": st.just("on")})
    changes = st.dictionaries(st.sampled_from(SCHEDULE_FIELDS), st.one_of(
        values, st.sampled_from(["noop", "*/5 * * * *", "", "Europe/Paris", '{"api_key": "***"}',
                                 "buffer_one", "all", "none", "0.5", "100"])), max_size=3)
    fields = st.builds(lambda base, more: {**base, **more}, valid, changes)

    seen: dict[int, int] = {}

    @settings(SWEEP, max_examples=40)
    @given(fields, st.sampled_from(["/schedules", "/schedules/org-1/update"]))
    def sweep(form: dict[str, str], path: str) -> None:
        data = {key: value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                for key, value in form.items()}
        answer = web.post(path, data={**data, "csrf": csrf}, follow_redirects=False)
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
        after_the_sweep(app, web)  # what the forms stored is shown, on every page
    finally:
        app.close()
