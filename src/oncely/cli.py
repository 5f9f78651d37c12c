"""The ``oncely`` command.

Exit codes (also in ``oncely --help`` and the README):

====  ==========================================================================
0     success
1     a check found a problem (``doctor``, ``demo``), or an unexpected internal error
2     a usage or configuration mistake: bad option, --app path, task name, JSON, URL
3     the store failed: database unreachable, not a database, contention outlasted
4     the schema does not match this oncely (run ``oncely migrate`` or upgrade)
5     a job or schedule does not exist
130   interrupted
====  ==========================================================================

User mistakes print one line, ``oncely: error: <what to fix>``, never a traceback.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from oncely import cli_input, cli_migrate, cli_queues, cli_schedules, readmodel
from oncely.app import App
from oncely.cli_input import id_of, load_app, name_of, stored_text
from oncely.cli_plugins import PluginGroup
from oncely.config import DEFAULT_DATABASE_URL, Settings
from oncely.errors import ArgsNotJSON, ConfigError, OncelyError
from oncely.observe.events import log_subscriber, logs_event
from oncely.redaction import mask_text
from oncely.store.base import JobFilter
from oncely.types import JobState
from oncely.validate import check_name

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """Exit codes: 0 ok; 1 problem found or internal error; 2 usage or configuration
mistake; 3 store failure (unreachable, not a database); 4 schema mismatch; 5 not found;
130 interrupted."""


class Env:
    """What every command gets: how to reach the app and the store."""

    def __init__(self, app_path: str | None, database_url: str | None, as_json: bool) -> None:
        self.app_path = app_path
        self.database_url = database_url
        self.as_json = as_json
        self._app: App | None = None

    def app(self, required: bool = False) -> App:
        if self.database_url is not None and not self.database_url.strip():
            raise ConfigError("--database-url is empty: give a URL such as "
                              "sqlite:///path/oncely.db, or leave the option out")
        if self._app is None:
            if self.app_path:
                self._app = load_app(self.app_path)
                if self.database_url:
                    self._app.settings = self._app.settings.with_(database_url=self.database_url)
            elif required:
                raise ConfigError("this command needs your app: pass --app module:attr "
                                  "or set ONCELY_APP")
            else:
                self._app = App(self.database_url or Settings.from_env().database_url)
        return self._app

    def reader(self, required: bool = False) -> App:
        """The app for a command that must not change the schema (all but ``migrate`` and
        ``worker``): its store opens only on a database that holds this oncely's schema, checked
        read-only first (:mod:`oncely.store.probe`); nothing is created or migrated."""
        app = self.app(required)
        app.auto_migrate = False
        return app

    @property
    def who(self) -> str:
        """Who runs this command, for the ``by`` of operator actions: ``user@host``."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a bare container)
            user = str(os.getuid())
        return f"{user}@{socket.gethostname()}"

    def emit(self, rows: Any, columns: Sequence[str] | None = None,
             title: str | None = None) -> None:
        emit(self, rows, columns, title)


def emit(
    env: Env, rows: Any, columns: Sequence[str] | None = None, title: str | None = None
) -> None:
    """Print rows as JSON (--json) or as a table (or key/value pairs for one dict)."""
    cli_input.emit(env.as_json, rows, columns, title)


@click.group(cls=PluginGroup, epilog=EXIT_CODES)
@click.option("--app", "app_path", envvar="ONCELY_APP", show_envvar=True,
              help="Your app, as module:attribute.")
@click.option("--database-url", envvar="ONCELY_DATABASE_URL", show_envvar=True,
              help=f"Store URL (default {DEFAULT_DATABASE_URL}; overrides the app's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--log-level", default="INFO", envvar="ONCELY_LOG_LEVEL", show_envvar=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="text", envvar="ONCELY_LOG_FORMAT", show_envvar=True,
              type=click.Choice(["text", "json"]))
@click.version_option(package_name="oncely")
@click.pass_context
def cli(ctx: click.Context, app_path: str | None, database_url: str | None, as_json: bool,
        log_level: str, log_format: str) -> None:
    """oncely: scheduled background jobs that run exactly once per slot."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ctx.obj = Env(app_path, database_url, as_json)
    ctx.obj.log_format = log_format


@cli.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), envvar="ONCELY_CONCURRENCY",
              show_envvar=True, help="Handler threads (default 4).")
@click.option("--queues", "-q", envvar="ONCELY_QUEUES", show_envvar=True,
              help="Comma-separated queues to work (default: all).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), envvar="ONCELY_METRICS_PORT",
              show_envvar=True, help="Serve this process's Prometheus metrics on this port.")
@click.option("--metrics-host", default="127.0.0.1", envvar="ONCELY_METRICS_HOST",
              show_envvar=True, show_default=True, help="Address for --metrics-port.")
@click.option("--no-migrate", is_flag=True, envvar="ONCELY_NO_MIGRATE", show_envvar=True,
              help="Refuse to start (exit 4) unless the schema is current, instead of migrating "
                   "it (production: run `oncely migrate` as a deploy step).")
@click.pass_obj
def worker(env: Env, concurrency: int | None, queues: str | None, metrics_port: int | None,
           metrics_host: str, no_migrate: bool) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal releases running jobs at once).
    Migrates a new or older schema first (logged as `schema.migrated`) unless --no-migrate or
    the app says auto_migrate=False."""
    app = env.app(required=True)
    if no_migrate:
        app.auto_migrate = False
    app.events.subscribe(log_subscriber(json_format=getattr(env, "log_format", "") == "json"),
                         when=logs_event)
    if metrics_port:
        from oncely.observe.metrics import serve_process_metrics

        serve_process_metrics(app.events, metrics_port, metrics_host)
    names = ([check_name("queue", q.strip()) for q in queues.split(",") if q.strip()]
             if queues else None)
    app.check_schema()  # migrated, or refused with one line, before the worker starts
    code = app.worker(concurrency=concurrency, queues=names).run()
    raise SystemExit(code)


@cli.command()
@click.argument("task")
@click.option("--args", "args_json", default="{}", help="Job arguments as a JSON object.")
@click.option("--delay", type=float, help="Seconds from now before it may run (finite, at most "
              "100 years).")
@click.option("--priority", type=int, help="Higher runs first (a 32-bit whole number).")
@click.option("--unique-key", help="Dedup key: no second job while one with it is unfinished.")
@click.option("--queue", callback=name_of("queue"), help="Override the task's queue.")
@click.pass_obj
def enqueue(env: Env, task: str, args_json: str, delay: float | None, priority: int | None,
            unique_key: str | None, queue: str | None) -> None:
    """Enqueue one job of TASK."""
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise ArgsNotJSON(f"--args is not valid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise ArgsNotJSON("--args is nested too deeply") from None
    if not isinstance(args, dict):
        raise ArgsNotJSON("--args must be a JSON object such as '{\"org_id\": 42}'")
    app = env.reader(required=True)
    handle = app.enqueue_job(task, args, delay=delay, priority=priority, unique_key=unique_key,
                             queue=queue)
    row = readmodel.job_summary(handle.job) | {"created": handle.created}
    if env.as_json:
        emit(env, row)
    else:
        verb = "enqueued" if handle.created else "already enqueued (unique key)"
        click.echo(f"{verb} job {handle.id} ({handle.job.task}, {handle.job.state})")


@cli.group()
def jobs() -> None:
    """List, inspect, retry and cancel jobs."""


@jobs.command("list")
@click.option("--state", type=click.Choice([s.value for s in JobState]))
@click.option("--queue", callback=name_of("queue"))
@click.option("--task", callback=name_of("task"))
@click.option("--schedule", callback=name_of("schedule"))
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.pass_obj
def jobs_list(env: Env, state: str | None, queue: str | None, task: str | None,
              schedule: str | None, limit: int) -> None:
    """Newest jobs first."""
    flt = JobFilter(state=JobState(state) if state else None, queue=queue, task=task,
                    schedule=schedule, limit=limit)
    emit(env, readmodel.list_jobs(env.reader().store, flt),
         ["id", "queue", "task", "state", "attempt", "max_attempts", "run_at", "last_error"])


@jobs.command("show")
@click.argument("job_id", type=int, callback=id_of("job"))
@click.pass_obj
def jobs_show(env: Env, job_id: int) -> None:
    """Everything about one job, with its error history."""
    app = env.reader()
    detail = readmodel.job_detail(app.store, job_id, app.clock.now(), app.settings.lease_ttl * 3)
    emit(env, detail, title=f"job {job_id}")


@jobs.command("retry")
@click.argument("job_id", type=int, callback=id_of("job"), required=False)
@click.option("--all", "retry_all", is_flag=True,
              help="Every failed job (dead letter), or those of --queue and --task.")
@click.option("--queue", callback=name_of("queue"),
              help="With --all: only this queue's failed jobs.")
@click.option("--task", callback=name_of("task"), help="With --all: only this task's failed jobs.")
@click.pass_obj
def jobs_retry(env: Env, job_id: int | None, retry_all: bool, queue: str | None,
               task: str | None) -> None:
    """Run a failed, cancelled, retryable or scheduled job again now (or --all dead letters)."""
    if retry_all != (job_id is None):
        raise ConfigError("give a job id, or --all [--queue Q] [--task T] for the dead letters")
    if not retry_all and (queue or task):
        raise ConfigError("--queue and --task select dead letters: use them with --all")
    if retry_all:
        cli_queues.retry_all(env, queue, task)
        return
    assert job_id is not None
    app = env.reader()
    job = app.retry_job(job_id, by=env.who)
    click.echo(f"job {job.id} is {job.state} (attempt {job.attempt} of {job.max_attempts})")


@jobs.command("cancel")
@click.argument("job_id", type=int, callback=id_of("job"))
@click.option("--reason", callback=stored_text, default="cancelled from the command line",
              show_default=True)
@click.pass_obj
def jobs_cancel(env: Env, job_id: int, reason: str) -> None:
    """Cancel a waiting job, or ask a running one to stop."""
    app = env.reader()
    job = app.cancel_job(job_id, reason, by=env.who)
    if job.state == JobState.RUNNING:
        click.echo(f"job {job.id} is running: cancellation requested")
    else:
        click.echo(f"job {job.id} is {job.state}")


@cli.command()
@click.argument("schedule", callback=name_of("schedule"))
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.pass_obj
def ledger(env: Env, schedule: str, limit: int) -> None:
    """The slots of SCHEDULE, newest first, with their outcomes, then its history."""
    store = env.reader().store
    slots = readmodel.ledger(store, schedule, limit)
    history = readmodel.schedule_history(store, schedule, limit)
    if env.as_json:
        emit(env, slots)
        return
    emit(env, slots, ["slot", "outcome", "job_id", "recorded_at", "note"], title="slots")
    emit(env, history, ["at", "event", "by", "detail"], title="history")


@cli.command()
@click.pass_obj
def leases(env: Env) -> None:
    """Singleton and leader leases with their fences."""
    emit(env, readmodel.leases(env.reader().store))


@cli.command()
@click.pass_obj
def workers(env: Env) -> None:
    """Registered workers and when they were last seen."""
    emit(env, readmodel.workers(env.reader().store))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def doctor(env: Env, as_json: bool) -> None:
    """Check the store and the fleet: findings, evidence, what to do. Exit 0 healthy, 1 not."""
    from oncely.observe.doctor import render_text

    app = env.reader()
    app.check_schema()  # no schema, or an older one: exit 4 with one line, like every reader
    report = app.doctor()
    click.echo(report.to_json() if as_json or env.as_json else render_text(report))
    raise SystemExit(report.exit_code)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="ONCELY_DASHBOARD_HOST",
              show_envvar=True)
@click.option("--port", default=8700, show_default=True, type=click.IntRange(1, 65535),
              envvar="ONCELY_DASHBOARD_PORT", show_envvar=True)
@click.option("--token", envvar="ONCELY_DASHBOARD_TOKEN", show_envvar=True,
              help="Allow retry/cancel for whoever signs in with it; at least 16 characters "
                   "(prefer the env variable).")
@click.option("--auth", type=click.Choice(["actions", "reads"]), default="actions",
              envvar="ONCELY_DASHBOARD_AUTH", show_envvar=True, show_default=True,
              help="What needs the token: actions only, or reads too.")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              envvar="ONCELY_DASHBOARD_ALLOWED_HOSTS", show_envvar=True,
              help="A host name clients reach the dashboard by (repeatable; the bind address "
                   "and localhost are always allowed). See docs/security.md.")
@click.pass_obj
def dashboard(env: Env, host: str, port: int, token: str | None, auth: str,
              allowed_hosts: tuple[str, ...]) -> None:
    """Serve the web dashboard, its JSON API and the fleet's /metrics (read-only without a
    token)."""
    from oncely.web.server import serve

    if token is not None and not token:
        raise ConfigError("--token is empty: give the token, or leave the option out for a "
                          "read-only dashboard")
    app = env.reader()
    app.check_schema()  # refused with one line rather than on every page
    serve(app, host, port, token, allowed_hosts, auth)


@cli.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Resolved ones too.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.pass_context
def anomalies(ctx: click.Context, show_all: bool, limit: int) -> None:
    """What the watchdog raised (open ones unless --all)."""
    if ctx.invoked_subcommand is None:
        env: Env = ctx.obj
        emit(env, readmodel.anomalies(env.reader().store, not show_all, limit),
             ["id", "kind", "severity", "summary", "last_seen_at", "resolved_at"])


@anomalies.command("check")
@click.pass_obj
def anomalies_check(env: Env) -> None:
    """Run the watchdog once now: raise, update and resolve anomalies."""
    result = env.reader().run_watchdog()
    rows = [{"change": change, "id": a.id, "kind": str(a.kind), "summary": a.summary}
            for change, found in (("raised", result.raised), ("open", result.updated),
                                  ("resolved", result.resolved)) for a in found]
    emit(env, rows, ["change", "id", "kind", "summary"])


@anomalies.command("resolve")
@click.argument("anomaly_id", type=int, callback=id_of("anomaly"))
@click.pass_obj
def anomalies_resolve(env: Env, anomaly_id: int) -> None:
    """Close an open anomaly by hand (the watchdog reopens it if the condition persists)."""
    env.reader().resolve_anomaly(anomaly_id, by=env.who)
    click.echo(f"anomaly {anomaly_id} resolved")


cli.add_command(cli_queues.queues)
cli.add_command(cli_schedules.schedules)
cli.add_command(cli_migrate.migrate)


def _click_message(exc: click.ClickException) -> str:
    """Click's complaint as one line, with where to read the usage."""
    message = " ".join(exc.format_message().split())
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        message += f" (see '{exc.ctx.command_path} --help')"
    return cli_input.one_line(message)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="oncely",
                 standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("oncely: interrupted", err=True)
        raise SystemExit(130) from None
    except click.ClickException as exc:
        click.echo(f"oncely: error: {_click_message(exc)}", err=True)
        raise SystemExit(exc.exit_code) from None
    except OncelyError as exc:
        click.echo(f"oncely: error: {cli_input.one_line(mask_text(str(exc)))}", err=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
