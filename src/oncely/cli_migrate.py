"""``oncely migrate``: the one command (with ``worker``) that changes the engine's schema.

``oncely migrate`` applies the missing migrations; ``--to VERSION`` goes up or down to that
version (down steps run newest first, each in its own transaction, and nothing runs when one of
them is missing: exit code 2); ``--status`` lists the steps, applied and pending, and changes
nothing. The metering tables have their own ``oncely metering migrate`` with the same options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import click

from oncely.app import App
from oncely.sql import MigrateResult, MigrationStep


class Env(Protocol):
    as_json: bool

    def app(self, required: bool = False) -> App: ...
    def emit(self, rows: Any, columns: Sequence[str] | None = None,
             title: str | None = None) -> None: ...


@click.command()
@click.option("--to", "to_version", type=click.IntRange(0), metavar="VERSION",
              help="Go up or down to this version (0 removes the schema).")
@click.option("--status", "show_status", is_flag=True,
              help="List the migrations, applied and pending; change nothing.")
@click.pass_obj
def migrate(env: Env, to_version: int | None, show_status: bool) -> None:
    """Create, upgrade or roll back the schema (refuses a schema newer than this oncely)."""
    if show_status and to_version is not None:
        raise click.UsageError("--status changes nothing: give it without --to")
    app = env.app()
    app.auto_migrate = False
    if show_status:
        version, steps = app.migration_status()
        print_status(env, f"{_dialect(app.url)} schema", version, steps)
        return
    print_result(env, f"{_dialect(app.url)} schema", app.migrate(to_version))


def _dialect(url: str) -> str:
    return "sqlite" if url.strip().lower().startswith("sqlite:") else "postgresql"


def print_status(env: Env, what: str, version: int, steps: Sequence[MigrationStep]) -> None:
    """The ``--status`` table, shared with ``oncely metering migrate``."""
    rows = [{"version": step.version, "migration": step.label,
             "state": "applied" if step.applied else "pending",
             "down_step": "yes" if step.reversible else "MISSING"} for step in steps]
    if env.as_json:
        env.emit({"version": version, "latest": len(steps), "steps": rows})
        return
    click.echo(f"{what} is at version {version}; this oncely has {len(steps)}")
    env.emit(rows, ["version", "migration", "state", "down_step"])


def print_result(env: Env, what: str, result: MigrateResult) -> None:
    """What ``migrate`` did."""
    if env.as_json:
        env.emit({"from": result.from_version, "to": result.to_version,
                  "applied": list(result.applied), "reverted": list(result.reverted)})
    else:
        click.echo(result.summary(what))
