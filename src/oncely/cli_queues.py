"""``oncely queues``: the queues of the fleet, their controls, pause and resume.

``oncely queues`` alone prints job counts per queue and state; ``queues list`` the operational
view (due jobs, running, rate, oldest wait, controls and what holds jobs back); ``queues pause Q``
and ``queues resume Q`` set the store flag every worker's claim obeys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import click

from oncely import readmodel
from oncely.app import App
from oncely.cli_input import name_of, stored_text
from oncely.validate import check_name


class Env(Protocol):
    """What the command line's Env (oncely.cli, which imports this module) gives a command."""

    as_json: bool

    @property
    def who(self) -> str: ...

    def reader(self, required: bool = False) -> App: ...
    def emit(self, rows: Any, columns: Sequence[str] | None = None,
             title: str | None = None) -> None: ...

LIST_COLUMNS = ["queue", "state", "due", "running", "max_running", "limit", "per_minute",
                "oldest_wait", "held", "failed"]


def _emit(env: Env, rows: Any, columns: list[str] | None = None) -> None:
    env.emit(rows, columns)  # the command line's printer (cli.py imports this module)


@click.group(invoke_without_command=True)
@click.pass_context
def queues(ctx: click.Context) -> None:
    """Queues: job counts per state (alone), or list, pause, resume."""
    if ctx.invoked_subcommand is None:
        env: Env = ctx.obj
        _emit(env, readmodel.queue_overview(env.reader().store))


@queues.command("list")
@click.pass_obj
def queues_list(env: Env) -> None:
    """Each queue: due jobs, running, starts per minute, oldest wait, limits, what holds it."""
    app = env.reader()
    rows = readmodel.queue_health(app.store, app.clock.now())
    if env.as_json:
        _emit(env, rows)
        return
    _emit(env, [_table_row(row) for row in rows], LIST_COLUMNS)


def _table_row(row: dict[str, Any]) -> dict[str, Any]:
    held = row["held"]
    if held and row["held_until"]:
        held = f"{held} until {row['held_until']}"
    return {
        "queue": row["queue"],
        "state": "paused" if row["paused"] else "active",
        "due": row["due"],
        "running": row["running"],
        "max_running": row["max_running"],
        "limit": row["limit"],
        "per_minute": row["rate_per_minute"],
        "oldest_wait": f"{row['oldest_waiting_seconds']:.1f}s" if row["due"] else None,
        "held": held,
        "failed": row["failed"],
    }


@queues.command("pause")
@click.argument("queue", callback=name_of("queue"))
@click.option("--reason", callback=stored_text,
              help="Why, for the event and whoever looks at the queue next.")
@click.pass_obj
def queues_pause(env: Env, queue: str, reason: str | None) -> None:
    """Stop starting jobs of QUEUE, on every worker; running jobs finish."""
    app = env.reader()
    app.pause_queue(check_name("queue", queue), reason, by=env.who)
    running = app.read.job_counts().get(queue, {}).get("running", 0)
    click.echo(f"queue {queue} paused: no job of it starts until `oncely queues resume {queue}`; "
               f"{running} running job(s) will finish")


@queues.command("resume")
@click.argument("queue", callback=name_of("queue"))
@click.pass_obj
def queues_resume(env: Env, queue: str) -> None:
    """Start jobs of QUEUE again."""
    app = env.reader()
    app.resume_queue(check_name("queue", queue), by=env.who)
    click.echo(f"queue {queue} resumed")


def retry_all(env: Env, queue: str | None, task: str | None) -> None:
    """``jobs retry --all``: bring the dead letters (failed jobs) back."""
    app = env.reader()
    retried, conflicts = app.retry_dead_letters(queue, task, by=env.who)
    which = " and ".join(f"{kind} {name}" for kind, name in (("queue", queue), ("task", task))
                         if name) or "every queue"
    if env.as_json:
        _emit(env, {"retried": retried, "unique_key_conflicts": conflicts})
        return
    click.echo(f"retried {retried} failed job(s) of {which}")
    if conflicts:
        shown = ", ".join(str(job_id) for job_id in conflicts[:20])
        more = "…" if len(conflicts) > 20 else ""
        click.echo(f"left failed: {len(conflicts)} job(s) whose unique key another unfinished job "
                   f"holds ({shown}{more})")
