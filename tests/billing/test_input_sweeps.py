"""Random input at every ``oncely metering`` command and option, and at the billing routes of the
dashboard (hypothesis), as the engine's sweeps do (:mod:`tests.acceptance.test_input_sweeps`):
one line and a documented exit code, or a status below 500; never a traceback.

A usage source that fails is exit 3 here by design (the billing commands' exit codes); an input
is never taken for a store failure. Random paths and URLs stay inside the test's directory and
never reach the network.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from oncely.web.app import create_app
from oncely_billing import build_app
from tests.acceptance.test_input_sweeps import (
    SWEEP,
    TOKEN,
    Command,
    command_lines,
    run,
    segments,
    sweep_app,  # noqa: F401  (a fixture)
    values,
)

with warnings.catch_warnings():  # Starlette asks for httpx2; httpx serves the test client fine
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

DOCUMENTED_EXITS = {0, 1, 2, 3, 4, 5}


def at_most(limit: int) -> Any:
    """Random values, but a whole number the option would take is cut to ``limit`` (seeding a
    million organizations is not what is being swept)."""
    def cut(value: str) -> str:
        try:
            return str(min(int(value), limit)) if int(value) > limit else value
        except (ValueError, TypeError):
            return value

    return st.one_of(values, st.integers(1, limit).map(str)).map(cut)


# Paths and usage URLs stay below the working directory (a temporary one).
inside = values.map(lambda v: "sweep/" + v.replace("/", "_").replace("\\", "_"))
usage_urls = st.one_of(
    inside, inside.map(lambda p: f"duckdb:///{p}.duckdb"), inside.map(lambda p: p + ".duckdb"),
    st.sampled_from(["sql", "duckdb:///usage.duckdb", "usage.duckdb", "chdb:///sweep/chdb",
                     "clickhouse", "mysql://root:pw@127.0.0.1:1/x", ""]))
instants = st.one_of(values, st.sampled_from(["2026-01-01", "2026-01-01T00:00:00+00:00",
                                              "0001-01-01", "9999-12-31T23:59:59"]))

COMMANDS = {
    "metering": [
        Command(("metering", "status")),
        Command(("metering", "stripe-status")),
        Command(("metering", "metrics")),
        Command(("metering", "migrate"), flags=("--status",)),
        Command(("metering", "seed"), ("--orgs", "--seed", "--usage", "--days", "--heavy-fraction",
                                       "--end"), flags=("--replace",),
                option_values=(("--orgs", at_most(8)), ("--days", at_most(3)),
                               ("--usage", inside), ("--end", instants)),
                baseline=(("--orgs", "3"), ("--days", "1"))),  # not the defaults: 50,000 orgs
        Command(("metering", "run-thresholds"), ("--fan-out",), flags=("--full", "--enqueue")),
        Command(("metering", "reconcile"), ("--days",), flags=("--dry-run",)),
        Command(("metering", "stripe-retry-failures"), ("--org",), fixed=("--yes",)),
        Command(("metering", "stripe-failures"), ("--limit",)),
    ],
    "metering orgs": [Command(("metering", "orgs", "show"), positional=1,
                              arguments=st.one_of(st.integers(-2, 2**70).map(str), values))],
    "metering stripe": [
        Command(("metering", "stripe-failures"), ("--code", "--limit")),
        Command(("metering", "stripe-retry-failures"), ("--code",), fixed=("--yes",)),
    ],
}


@st.composite
def metering_lines(draw: Any, commands: list[Command]) -> list[str]:
    argv = draw(command_lines(commands))
    group: list[str] = []
    if draw(st.booleans()):
        group += ["--usage", draw(usage_urls)]
    if draw(st.booleans()):
        group.append("--json")
    return argv[:1] + group + argv[1:]


@pytest.mark.parametrize("group, examples", [
    ("metering", 30),
    ("metering orgs", 15),
    ("metering stripe", 20),
])
def test_random_values_at_every_metering_option(sweep_app: str, group: str,  # noqa: F811
                                                examples: int) -> None:
    @settings(SWEEP, max_examples=examples)
    @given(metering_lines(COMMANDS[group]))
    def sweep(argv: list[str]) -> None:
        full = ["--app", sweep_app, *argv]
        code, _, stderr = run(full)
        assert "Traceback" not in stderr, (full, stderr)
        assert code in DOCUMENTED_EXITS, (full, code, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()
                 and " INFO " not in line and " WARNING " not in line]  # the run's own log
        if code not in (0, 1):
            assert len(lines) == 1 and lines[0].startswith("oncely: error: "), (full, stderr)
        if code == 3:  # a usage source that cannot be read, never the store
            assert "usage" in lines[0] or "duckdb" in lines[0], (full, stderr)
        assert "pw@" not in stderr

    for argv in reversed(PINNED.get(group, ())):
        sweep = example(argv)(sweep)
    sweep()


# Command lines run before the random ones: defects found here once, kept as examples.
PINNED = {"metering orgs": (["metering", "orgs", "show", str(2**63)],),
          "metering stripe": (["metering", "stripe-failures", "--code", "\udcff"],)}

ROUTES = ["/billing", "/metrics/billing", "/api/billing/metrics", "/api/orgs/{}/ingestion"]


def test_random_requests_at_the_billing_routes(any_url: str, tmp_path: Path) -> None:
    app = build_app(any_url, usage_source=f"duckdb:///{tmp_path / 'usage.duckdb'}")
    app.migrate()
    web = TestClient(create_app(app, TOKEN, auth="reads"), base_url="http://127.0.0.1:8700",
                     raise_server_exceptions=False)
    bearer = {"authorization": f"Bearer {TOKEN}"}

    @settings(SWEEP, max_examples=40)
    @given(st.sampled_from(ROUTES), st.one_of(st.integers(-1, 2**70).map(str), segments),
           st.lists(st.tuples(st.sampled_from(["org", "limit", "x"]), segments), max_size=3),
           st.booleans())
    def sweep(route: str, segment: str, query: list[tuple[str, str]], signed: bool) -> None:
        path = route.replace("{}", segment or "x")
        if query:
            path += "?" + "&".join(f"{key}={value}" for key, value in query)
        answer = web.get(path, headers=bearer if signed else {})
        assert answer.status_code < 500, (path, answer.status_code, answer.text[:300])
        assert "Traceback" not in answer.text
        if not signed and not path.startswith("/billing"):
            assert answer.status_code == 401, path

    try:
        sweep()
    finally:
        app.close()


def test_every_billing_route_is_swept() -> None:
    from oncely_billing.web import routes

    app = build_app("sqlite:///:memory:", usage_source="sql")
    try:
        paths = {getattr(route, "path", None) for route in routes(app)}
    finally:
        app.close()
    assert paths == {route.replace("{}", "{org_id:int}") for route in ROUTES}, paths
