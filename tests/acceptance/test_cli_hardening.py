"""The command line's and the library's edges: secrets in messages, names that reach the store,
values that used to end in a traceback or the wrong exit code — each now one line and a
documented code, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.acceptance.test_cli import APP, oncely, one_line_error
from tests.conftest import ROOT, open_basic_app

import oncely as oncely_lib
from oncely.cli_input import load_app
from oncely.errors import ArgsNotJSON, ConfigError, InvalidURL

BIG_ID = str(2**63)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def migrated_db(db: str) -> str:
    """``db`` with the schema in place: only `oncely migrate` (or a worker) creates it."""
    made = oncely("--database-url", db, "migrate")
    assert made.returncode == 0, made.stderr
    return db


# 3. error messages never echo a password --------------------------------------------------------

@pytest.mark.parametrize("url, fragment", [
    ("mysql://root:s3cret@127.0.0.1/app", "unsupported database URL scheme 'mysql'"),
    ("postgresql://app:s3cret@[::1/app", "malformed database URL"),
    ("postgresql://app@127.0.0.1:1/app?password=s3cret&sslmode=nope", "invalid sslmode='nope'"),
])
def test_error_messages_mask_the_password(url: str, fragment: str) -> None:
    one_line_error(oncely("--database-url", url, "jobs", "list"), 2, fragment)
    assert "s3cret" not in oncely("--database-url", url, "jobs", "list").stderr
    with pytest.raises(InvalidURL) as caught:
        oncely_lib.App(url).store  # noqa: B018  (opening the store is the point)
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)


@pytest.mark.parametrize("url", ["postgresql://u:s3/cret@127.0.0.1:1/x",
                                 "postgresql://u:s3?cret@127.0.0.1:1/x",
                                 "postgresql://u:s3#cret@127.0.0.1:1/x",
                                 "postgresql://u:53/cret@127.0.0.1:1/x"])
def test_a_password_holding_a_url_delimiter_is_refused_unquoted(url: str) -> None:
    """An unencoded '/', '?' or '#' ends the authority early: the password's start would read as
    a host and a port. It is refused before any port is quoted, asking for percent-encoding."""
    for argv, env in ((["--database-url", url, "jobs", "list"], None),
                      (["migrate"], {"ONCELY_DATABASE_URL": url})):
        result = oncely(*argv, env=env)
        one_line_error(result, 2, "percent-encode")
        assert "s3" not in result.stderr and "53" not in result.stderr, result.stderr
        assert "u:***@127.0.0.1:1/x" in result.stderr


# 4. names that reach the store ------------------------------------------------------------------

def test_a_queue_name_is_validated_on_every_enqueue_path(any_url: str) -> None:
    app = open_basic_app(any_url)
    try:
        for queue in ("\x1b[31mred\x1b[0m", "q" * 8001, "", "a b"):
            with pytest.raises(ConfigError, match="queue name"):
                app.enqueue_job("record", {"n": 1}, queue=queue)
            with pytest.raises(ConfigError, match="queue name"):
                app.enqueue_many("record", [{"n": 1}], queue=queue)
            with pytest.raises(ConfigError, match="queue"):
                app.schedule(f"s{len(queue)}", "record", every=60, args={"n": 1}, queue=queue)
        assert app.store.job_counts() == []
        assert app.enqueue_job("record", {"n": 1}, queue="ok.queue-1").job.queue == "ok.queue-1"
    finally:
        app.close()


@pytest.mark.parametrize("command", [
    ["pause"], ["resume"], ["trigger"], ["delete"], ["apply"], ["history"],
    ["update", "--every", "60"], ["backfill", "--from", "2026-01-01", "--to", "2026-01-02"],
    ["create", "--task", "record"],
])
@pytest.mark.parametrize("name", ["\udc80", "a\x00b", "\x1b[31mred"])
def test_a_schedule_name_no_store_could_hold_is_one_line(
    any_url: str, command: list[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every `schedules` subcommand checks its NAME as `ledger` does: undecodable bytes used to
    end in a traceback (SQLite), a NUL in a store failure (PostgreSQL)."""
    from oncely.cli import main

    open_basic_app(any_url).close()
    with pytest.raises(SystemExit) as done:
        main(["--app", APP, "--database-url", any_url, "schedules", command[0], name,
              *command[1:]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"oncely: error: NAME: schedule name {name!a} is invalid")


def test_terminal_escapes_in_stored_values_are_printed_escaped(migrated_db: str) -> None:
    db = migrated_db
    made = oncely("--app", APP, "--database-url", db, "--json", "enqueue", "record",
                  "--args", json.dumps({"n": "\x1b[2J\x1b[31m[/bold] not markup"}))
    assert made.returncode == 0, made.stderr
    shown = oncely("--database-url", db, "jobs", "show", "1")
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\\u001b[2J" in shown.stdout
    assert "[/bold] not markup" in shown.stdout
    one_line_error(oncely("--app", APP, "--database-url", db, "enqueue", "record",
                          "--queue", "\x1b[31mred"), 2, "queue name '\\x1b[31mred' is invalid")


# 7. what used to be a traceback -----------------------------------------------------------------

@pytest.mark.parametrize("source, attr, fragment", [
    ("raise RuntimeError('boom at import')\n", "app",
     "cannot import 'edges_app': RuntimeError: boom at import"),
    ("def broken(:\n", "app", "cannot import 'edges_app': SyntaxError"),
    ("def app():\n    raise ValueError('factory says no')\n", "app",
     "calling edges_app.app() failed: ValueError: factory says no"),
    ("import sys\nsys.exit(7)\n", "app", "'edges_app' exited while importing (SystemExit 7;"),
    ("raise SystemExit('no \\x1b[2J')\n", "app",
     "'edges_app' exited while importing (SystemExit 'no \\x1b[2J';"),
    ("import sys\ndef app():\n    sys.exit()\n", "app", "edges_app.app() exited (SystemExit None;"),
])
def test_an_app_that_fails_to_load_says_what_and_where(
    tmp_path: Path, source: str, attr: str, fragment: str
) -> None:
    (tmp_path / "edges_app.py").write_text(source)
    result = oncely("--app", f"edges_app:{attr}", "jobs", "list", cwd=tmp_path)
    one_line_error(result, 2, fragment)
    assert "--log-level debug" in result.stderr
    debug = oncely("--log-level", "debug", "--app", f"edges_app:{attr}", "jobs", "list",
                   cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # the full story, when asked


def test_a_module_beside_the_app_can_be_imported_when_a_handler_first_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The current directory stays on sys.path (last) after --app loads: a handler's deferred
    import of a module beside the app works in the worker, long after loading."""
    (tmp_path / "lazy_app.py").write_text(
        "import oncely\napp = oncely.App('sqlite:///lazy.db')\n\n"
        "@app.task(name='report', singleton=True)\ndef report(ctx):\n"
        "    from lazy_helper import VALUE  # imported when it first runs\n"
        "    return VALUE\n")
    (tmp_path / "lazy_helper.py").write_text("VALUE = 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    app = load_app("lazy_app:app")
    try:
        assert sys.path[-1] == str(tmp_path)  # after the installed packages
        assert app.run_now("report").result == 42
    finally:
        app.close()
        for name in ("lazy_app", "lazy_helper"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("args, fragment", [
    (["jobs", "show", BIG_ID], "job id must be a whole number from 1 to 9223372036854775807"),
    (["jobs", "cancel", BIG_ID], "job id must be a whole number"),
    (["jobs", "retry", BIG_ID], "job id must be a whole number"),
    (["anomalies", "resolve", BIG_ID], "anomaly id must be a whole number"),
    (["--app", APP, "enqueue", "record", "--delay", "nan"], "delay must be a finite number"),
    (["--app", APP, "enqueue", "record", "--delay", "1e300"], "delay must be a finite number"),
    (["--app", APP, "enqueue", "record", "--delay", "-inf"], "delay must be a finite number"),
    (["--app", APP, "enqueue", "record", "--priority", "99999999999999999999999"],
     "priority must be a whole number from -2147483648 to 2147483647"),
    (["--app", APP, "enqueue", "record", "--args", "[" * 100_000], "nested too deeply"),
    (["--app", APP, "enqueue", "record", "--args", '{"n": 1, "org": 2}'],
     "task 'record': the handler takes no argument 'org' (the handler takes n)"),
])
def test_values_that_used_to_raise_are_one_line(db: str, args: list[str], fragment: str) -> None:
    one_line_error(oncely("--database-url", db, *args), 2, fragment)


@pytest.mark.parametrize("spec", ["bogus", "warp:x:1:2", "warp:2026-01-01T00:00:00:nan:0",
                                  "warp:2026-01-01T00:00:00:1e300:0"])
def test_a_bad_clock_setting_is_one_line(db: str, spec: str) -> None:
    one_line_error(oncely("--database-url", db, "jobs", "list", env={"ONCELY_CLOCK": spec}), 2,
                   "ONCELY_CLOCK=")


def test_a_line_break_in_a_quoted_value_keeps_the_error_on_one_line(
    migrated_db: str, tmp_path: Path
) -> None:
    result = oncely("--app", APP, "--database-url", migrated_db, "metering", "seed", "--orgs",
                    "1", "--days", "1", "--usage", "missing/\nrm -rf x.duckdb", cwd=tmp_path)
    one_line_error(result, 2, "--usage missing/\\nrm -rf x.duckdb: the folder missing does")


# 8. exit codes that said the wrong thing --------------------------------------------------------

@pytest.mark.parametrize("args", [{"note": "a\x00b"}, {"a\x00": 1}, {"note": "\ud800"},
                                  {"deep": [{"x": "\udcff"}]}])
def test_nul_and_lone_surrogates_in_args_are_refused_on_both_stores(
    any_url: str, args: dict
) -> None:
    app = open_basic_app(any_url)
    try:
        with pytest.raises(ArgsNotJSON, match="NUL character or a lone surrogate"):
            app.enqueue_job("record", args)
        for key in ("k\x00", "k\ud800"):
            with pytest.raises(ConfigError, match="unique key"):
                app.enqueue_job("record", {"n": 1}, unique_key=key)
        with pytest.raises(ConfigError, match="singleton key"):
            _singleton_task(app).enqueue(org="a\x1b[2J")  # storable in args, not in a key
        assert app.store.job_counts() == []
    finally:
        app.close()


def _singleton_task(app: oncely_lib.App) -> oncely_lib.Task:
    @app.task(name="per-org", singleton="{org}")
    def per_org(ctx: oncely_lib.JobContext, org: str) -> None: ...

    return per_org  # type: ignore[no-any-return]


def test_nul_in_args_is_exit_2_on_the_command_line(any_url: str) -> None:
    result = oncely("--app", APP, "--database-url", any_url, "enqueue", "record",
                    "--args", '{"n": "a\\u0000b"}')
    one_line_error(result, 2, "holds a NUL character or a lone surrogate")
    undecodable = oncely("--app", APP, "--database-url", any_url, "enqueue", "record",
                         "--unique-key", "k\udcff")
    one_line_error(undecodable, 2, "unique key")


@pytest.mark.parametrize("url, fragment", [
    ("postgresql://postgres@127.0.0.1:5432/test?sslmode=bogus", "invalid sslmode='bogus'"),
    ("postgresql://postgres@127.0.0.1:99999/test", "invalid port '99999'"),
    ("postgresql://postgres@127.0.0.1/test?port=0", "invalid port '0'"),
    ("postgresql://postgres@127.0.0.1/test?connect_timeout=soon", "invalid connect_timeout"),
])
def test_a_bad_connection_parameter_is_named_not_taken_for_an_outage(
    url: str, fragment: str
) -> None:
    one_line_error(oncely("--database-url", url, "jobs", "list"), 2, fragment)


def test_an_empty_database_url_is_a_mistake_not_the_default(tmp_path: Path) -> None:
    one_line_error(oncely("--database-url", "", "jobs", "list", cwd=tmp_path), 2,
                   "--database-url is empty")
    assert not (tmp_path / "oncely.db").exists()


@pytest.mark.parametrize("args", [["migrate"], ["jobs", "list"],
                                  ["--app", "env_app:app", "jobs", "list"]])
def test_an_empty_database_url_variable_is_a_mistake_not_the_default(
    tmp_path: Path, args: list[str]
) -> None:
    (tmp_path / "env_app.py").write_text("import oncely\napp = oncely.App()\n")
    result = oncely(*args, cwd=tmp_path, env={"ONCELY_DATABASE_URL": ""})
    one_line_error(result, 2, "ONCELY_DATABASE_URL is empty")
    assert not (tmp_path / "oncely.db").exists()


def test_a_stray_module_in_the_current_directory_shadows_nothing(
    tmp_path: Path, migrated_db: str
) -> None:
    db = migrated_db
    for name in ("rich", "click", "json"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('shadowed: imported from cwd')\n")
    (tmp_path / "myapp.py").write_text("import oncely\napp = oncely.App()\n")
    script = str(Path(sys.executable).parent / "oncely")  # the installed command
    for command in ([script], [sys.executable, "-m", "oncely"]):
        if command[-1] == "oncely" and len(command) > 1:
            (tmp_path / "click.py").unlink(missing_ok=True)  # python -m imports the package
            (tmp_path / "json.py").unlink(missing_ok=True)  # before oncely can help it
        for args in (["--app", "myapp:app", "jobs", "list"], ["queues", "list"]):
            result = subprocess.run([*command, "--database-url", db, *args], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=60,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert result.returncode == 0, (command, args, result.stderr)
            assert "shadowed" not in result.stderr and "(none)" in result.stdout


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something already listens on: `oncely dashboard` checks every option, then
    refuses to listen there (exit 2) instead of serving."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_dashboard_allowed_hosts_are_checked_and_their_ports_dropped(
    migrated_db: str, taken_port: int
) -> None:
    def dashboard(*options: str) -> subprocess.CompletedProcess[str]:
        return oncely("--database-url", migrated_db, "dashboard", "--port", str(taken_port),
                      *options)

    one_line_error(dashboard("--allowed-host", "https://jobs.example.com"), 2,
                   "--allowed-host 'https://jobs.example.com' is not a host name")
    one_line_error(dashboard("--allowed-host", "jobs.example.com:443"), 2, "cannot listen on")
    anyone = dashboard("--allowed-host", "*")
    assert anyone.returncode == 2 and "Traceback" not in anyone.stderr
    assert anyone.stderr.count("DNS rebinding") == 1, anyone.stderr
    assert anyone.stderr.strip().splitlines()[-1].startswith("oncely: error: cannot listen on")

