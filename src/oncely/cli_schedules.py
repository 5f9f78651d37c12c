"""``oncely schedules``: the stored schedules and what operators do to them without a deploy.

``oncely schedules`` alone lists every stored schedule (declared by code or dynamic) with the
revision in force and the live workers whose code declares another definition. The subcommands
act through the App's facade (:mod:`oncely.schedule_actions`), each recorded with who asked
(``user@host``) in the schedule's history (``oncely ledger NAME``).
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import click

from oncely import readmodel
from oncely.app import App
from oncely.cli_input import name_of, stored_text
from oncely.errors import ConfigError
from oncely.schedule_actions import BACKFILL_CAP, args_from_json
from oncely.store.base import UpsertOutcome


class Env(Protocol):
    as_json: bool

    def app(self, required: bool = False) -> App: ...
    def reader(self, required: bool = False) -> App: ...
    def emit(self, rows: Any, columns: Sequence[str] | None = None,
             title: str | None = None) -> None: ...


COLUMNS = ["name", "origin", "task", "trigger", "state", "revision", "last_slot", "last_outcome",
           "next_slot", "disagree"]


def who() -> str:
    """Who asked, as the history records it: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _instant(value: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not an ISO 8601 time "
                          "(e.g. 2026-11-30T10:00:00+00:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group(invoke_without_command=True)
@click.pass_context
def schedules(ctx: click.Context) -> None:
    """Schedules: the definition in force of each (alone), or act on one."""
    if ctx.invoked_subcommand is None:
        env: Env = ctx.obj
        app = env.reader()
        rows = readmodel.schedules_overview(app.store, app.clock.now(),
                                            app.settings.lease_ttl * 3, app.tasks)
        env.emit(rows, None if env.as_json else COLUMNS)


@schedules.command("pause")
@click.argument("name", callback=name_of("schedule"))
@click.option("--reason", callback=stored_text, help="Why, for the history.")
@click.pass_obj
def pause(env: Env, name: str, reason: str | None) -> None:
    """Stop firing NAME: its slots are recorded paused until `resume` (survives deploys)."""
    env.reader().pause_schedule(name, reason, by=who())
    click.echo(f"schedule {name} paused: its slots are recorded 'paused' until "
               f"`oncely schedules resume {name}`")


@schedules.command("resume")
@click.argument("name", callback=name_of("schedule"))
@click.pass_obj
def resume(env: Env, name: str) -> None:
    """Fire NAME again; its catch-up policy decides which paused slots run now."""
    handles = env.reader().resume_schedule(name, by=who())
    click.echo(f"schedule {name} resumed; {len(handles)} paused slot(s) run by its catch-up "
               "policy")


@schedules.command("trigger")
@click.argument("name", callback=name_of("schedule"))
@click.pass_obj
def trigger(env: Env, name: str) -> None:
    """Run NAME's current slot now: one job for the whole fleet, whoever asks."""
    handle = env.reader(required=True).trigger(name, by=who())  # builds a job of its task
    if handle is None:
        click.echo(f"schedule {name}: its current slot already has a job (or it is disabled); "
                   "nothing enqueued")
    else:
        click.echo(f"schedule {name}: job {handle.id} enqueued for slot {handle.job.slot}")


@schedules.command("backfill")
@click.argument("name", callback=name_of("schedule"))
@click.option("--from", "start", required=True, help="Slots after this time (ISO 8601).")
@click.option("--to", "end", required=True, help="Slots up to this time (ISO 8601).")
@click.option("--yes", is_flag=True, help=f"Allow more than {BACKFILL_CAP} slots.")
@click.pass_obj
def backfill(env: Env, name: str, start: str, end: str, yes: bool) -> None:
    """One job for each slot of NAME in (--from, --to] that has none."""
    handles = env.reader(required=True).backfill_schedule(
        name, _instant(start, "--from"), _instant(end, "--to"), yes=yes, by=who())
    click.echo(f"schedule {name}: {len(handles)} slot job(s) enqueued")


@schedules.command("delete")
@click.argument("name", callback=name_of("schedule"))
@click.option("--force", is_flag=True, help="Delete even while a live worker declares it.")
@click.pass_obj
def delete(env: Env, name: str, force: bool) -> None:
    """Delete NAME (its ledger and history stay)."""
    env.reader().delete_schedule(name, force=force, by=who())
    click.echo(f"schedule {name} deleted")


@schedules.command("apply")
@click.argument("name", callback=name_of("schedule"))
@click.pass_obj
def apply(env: Env, name: str) -> None:
    """Put the definition of NAME that this app's code declares in force (a new revision)."""
    app = env.app(required=True)
    outcome = app.apply_schedule(name, by=who())
    row = app.stored_schedule(name)[0]
    if outcome == UpsertOutcome.UNCHANGED:
        click.echo(f"schedule {name}: this definition is already in force (revision "
                   f"{row.revision})")
    else:
        click.echo(f"schedule {name}: revision {row.revision} in force")


def _definition(cron: str | None, every: float | None, args: str | None,
                options: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {key: value for key, value in options.items() if value is not None}
    if cron is not None:
        found["cron"] = cron
    if every is not None:
        found["every"] = every
    if args is not None:
        found["args"] = args_from_json(args)
    return found


def _definition_options(command: Any) -> Any:
    for option in reversed([
        click.option("--cron", help="Cron expression (5 or 6 fields)."),
        click.option("--every", type=float, help="Interval in seconds."),
        click.option("--args", help="Task arguments as a JSON object."),
        click.option("--tz", help="Time zone of the cron (default UTC)."),
        click.option("--overlap", type=click.Choice(["skip", "buffer_one", "allow"])),
        click.option("--catch-up", "catch_up", type=click.Choice(["none", "latest", "all"])),
        click.option("--queue", help="Queue of its jobs (default: the task's)."),
        click.option("--misfire-grace", "misfire_grace", type=float,
                     help="Seconds a slot may start late before it is recorded missed."),
        click.option("--enabled/--disabled", default=None,
                     help="A disabled schedule is stored but fires nothing."),
    ]):
        command = option(command)
    return command


@schedules.command("create")
@click.argument("name", callback=name_of("schedule"))
@click.option("--task", required=True, help="A task the workers have.")
@_definition_options
@click.pass_obj
def create(env: Env, /, name: str, task: str, cron: str | None, every: float | None,
           args: str | None, **options: Any) -> None:
    """Create the dynamic schedule NAME (stored, fired by the workers that have the task)."""
    app = env.app(required=True)
    row = app.create_schedule(name, task, by=who(), **_definition(cron, every, args, options))
    click.echo(f"schedule {name} created (dynamic, revision {row.revision})")


@schedules.command("update")
@click.argument("name", callback=name_of("schedule"))
@_definition_options
@click.pass_obj
def update(env: Env, /, name: str, cron: str | None, every: float | None, args: str | None,
           **options: Any) -> None:
    """Change the dynamic schedule NAME: a new revision."""
    changes = _definition(cron, every, args, options)
    if not changes:
        raise ConfigError("nothing to change: pass --cron, --every, --args, …")
    row = env.app(required=True).update_schedule(name, by=who(), **changes)
    click.echo(f"schedule {name}: revision {row.revision} in force")


@schedules.command("history")
@click.argument("name", callback=name_of("schedule"))
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.pass_obj
def history(env: Env, name: str, limit: int) -> None:
    """What deploys and operators did to NAME, newest first."""
    app = env.reader()
    env.emit(readmodel.schedule_history(app.store, name, limit), ["at", "event", "by", "detail"])
