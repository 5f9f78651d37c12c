"""``oncely metering …``: seed a dataset, migrate, run the free-tier job now, inspect an org.

The group works standalone (``python -m oncely_billing.cli``) and attached to the engine's CLI
(``cli.add_command(metering)``), where it reuses ``--app``/``--database-url``/``--json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import click

import oncely
from oncely.cli_input import id_of
from oncely_billing import models, notify, reconcile_cli, stripe_cli
from oncely_billing.errors import UsageSourceError, UsageSourceUnavailable
from oncely_billing.migrations import migrate as metering_migrate
from oncely_billing.migrations import status as metering_status
from oncely_billing.runtime import (
    DEFAULT_USAGE_URL,
    Metering,
    build_app,
    install,
    metering_of,
    usage_source_from_url,
)
from oncely_billing.settings import MAX_FAN_OUT, MeteringSettings


class Context:
    def __init__(self, parent: Any, database_url: str | None, usage_url: str | None,
                 as_json: bool) -> None:
        self.parent = parent
        self.database_url = database_url or getattr(parent, "database_url", None)
        self.usage_url = usage_url
        self.as_json = as_json or bool(getattr(parent, "as_json", False))
        self._runtime: Metering | None = None

    def runtime(self) -> Metering:
        """The metering runtime: of the parent's --app when given, else built from the URLs."""
        if self._runtime is None:
            app: oncely.App | None = None
            if getattr(self.parent, "app_path", None):
                app = self.parent.app()
            if app is None:
                app = build_app(self.database_url, usage_source=self.usage_url)
            try:
                self._runtime = metering_of(app)
            except oncely.ConfigError:
                url = self.usage_url or DEFAULT_USAGE_URL
                self._runtime = install(app, usage_source_from_url(url, app),
                                        MeteringSettings.from_env())
        return self._runtime

    def emit(self, data: Any, title: str | None = None) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=False, title=title)
        for key, value in data.items():
            shown = json.dumps(value, default=str) if isinstance(value, dict | list) else value
            table.add_row(str(key), "" if shown is None else str(shown))
        Console(soft_wrap=True).print(table)


@click.group("metering")
@click.option("--database-url", envvar="ONCELY_DATABASE_URL", show_envvar=True,
              help="Job store URL (default: the parent command's, else sqlite:///oncely.db).")
@click.option("--usage", "usage_url", envvar="ONCELY_METERING_USAGE_URL", show_envvar=True,
              help=f"Usage source URL (default {DEFAULT_USAGE_URL}): duckdb:///path.duckdb, "
                   "chdb:///dir, clickhouse://host:8123/db or sql.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def metering(ctx: click.Context, database_url: str | None, usage_url: str | None,
             as_json: bool) -> None:
    """Billing workloads: usage data, the free-tier threshold job, the ingestion gate."""
    ctx.obj = Context(ctx.obj, database_url, usage_url, as_json)


@metering.command()
@click.option("--to", "to_version", type=click.IntRange(0), metavar="VERSION",
              help="Only the metering tables: go up or down to this version.")
@click.option("--status", "show_status", is_flag=True,
              help="List the metering migrations, applied and pending.")
@click.pass_obj
def migrate(obj: Context, to_version: int | None, show_status: bool) -> None:
    """Create or upgrade the metering tables (the engine's schema first); --to VERSION moves
    only the metering tables, up or down; --status lists their migrations."""
    if show_status and to_version is not None:
        raise click.UsageError("--status changes nothing: give it without --to")
    app = obj.runtime().app
    if show_status:
        version, steps = metering_status(app)
        rows = {step.label: ("applied" if step.applied else "pending")
                + ("" if step.reversible else ", no down step") for step in steps}
        obj.emit({"version": version, "latest": len(steps), **rows}, title="metering schema")
        return
    if to_version is None:
        app.migrate()
    result = metering_migrate(app, to_version)
    if obj.as_json:
        obj.emit(asdict(result))
    else:
        click.echo(result.summary("the metering schema"))


@metering.command()
@click.option("--orgs", type=click.IntRange(1, 10_000_000), default=50_000, show_default=True)
@click.option("--seed", "seed_value", type=int, default=1, show_default=True,
              help="Same seed, same dataset.")
@click.option("--usage", "usage_path", default="usage.duckdb", show_default=True,
              help="DuckDB file to write the events to.")
@click.option("--days", type=click.IntRange(1, 400), default=32, show_default=True)
@click.option("--heavy-fraction", type=click.FloatRange(0, 1), default=0.002, show_default=True,
              help="Share of organizations with 30k-400k units a month.")
@click.option("--end", "end_text", help="Last instant of the data (ISO 8601, UTC); default now.")
@click.option("--replace", is_flag=True, help="Delete existing metering data and the file first.")
@click.pass_obj
def seed(obj: Context, orgs: int, seed_value: int, usage_path: str, days: int,
         heavy_fraction: float, end_text: str | None, replace: bool) -> None:
    """Build a realistic synthetic dataset (events in DuckDB, organizations in the store)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from oncely_billing.seed import seed as build

    end = _parse_end(end_text)
    app = obj.runtime().app
    columns = (TextColumn("{task.description:<14}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, transient=obj.as_json, disable=obj.as_json) as bar:
        tasks: dict[str, Any] = {}

        def progress(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        report = build(app, usage_path, orgs=orgs, seed=seed_value, end=end, days=days,
                       heavy_fraction=heavy_fraction, replace=replace, progress=progress)
    data = {**asdict(report), "events": report.events, "usage_path": usage_path}
    obj.emit(data, title="seeded")


def _parse_end(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        end = datetime.fromisoformat(text)
    except ValueError:
        raise oncely.ConfigError(f"--end {text!r} is not an ISO 8601 date or time") from None
    return end if end.tzinfo else end.replace(tzinfo=UTC)


@metering.command("run-thresholds")
@click.option("--full", is_flag=True, help="Recount every current cycle (the nightly reconcile).")
@click.option("--enqueue", is_flag=True, help="Enqueue it for the workers; do not run it here.")
@click.option("--fan-out", "fan_out", type=click.IntRange(0, MAX_FAN_OUT), metavar="N",
              help="N chunk jobs run by the workers of the chunk queue (0: one run here; "
                   "default: ONCELY_METERING_FAN_OUT).")
@click.pass_obj
def run_thresholds(obj: Context, full: bool, enqueue: bool, fan_out: int | None) -> None:
    """Run the free-tier threshold job once, now (singleton: refused while a run is active)."""
    runtime = obj.runtime()
    task = runtime.thresholds_task
    args: dict[str, Any] = {"full": full} if fan_out is None else {"full": full,
                                                                   "fan_out": fan_out}
    if enqueue:
        stamp = runtime.app.clock.now().strftime("%Y%m%dT%H%M%S")
        handle = runtime.app.enqueue_job(task, args, unique_key=f"manual-thresholds-{stamp}")
        obj.emit({"job_id": handle.id, "created": handle.created, "queue": task.options.queue})
        return
    try:  # in this process, under the job's lease (renewed) and timeout; never left queued
        job = runtime.app.run_now(task, by="cli", **args)
    except oncely.SingletonBusy as exc:
        raise oncely.SingletonBusy(
            f"a free-tier run is in progress (the job is a singleton); try again when it ends "
            f"({exc})") from None
    if job.state != oncely.JobState.SUCCEEDED:
        raise _run_failure(job.state, job.errors[-1].message if job.errors
                           else "no error recorded")
    obj.emit(job.result, title=f"free-tier run (job {job.id})")


_SOURCE_ERRORS: dict[str, type[oncely.OncelyError]] = {
    "UsageSourceError": UsageSourceError, "UsageSourceUnavailable": UsageSourceUnavailable,
}


def _run_failure(state: oncely.JobState, message: str) -> Exception:
    """One line for a failed run: a usage-source failure keeps its own exit code (3)."""
    kind, _, detail = message.partition(": ")
    first_line = (detail or message).splitlines()[0] if (detail or message) else ""
    error = _SOURCE_ERRORS.get(kind)
    if error is not None:
        return error(f"the free-tier run failed, nothing was written: {first_line}")
    return click.ClickException(f"the run ended {state.value}: {message.splitlines()[0]}")


@metering.group()
def orgs() -> None:
    """Organizations as the billing jobs see them."""


@orgs.command("show")
@click.argument("org_id", type=int, callback=id_of("organization"))
@click.pass_obj
def orgs_show(obj: Context, org_id: int) -> None:
    """Plan, cycle, usage, threshold state, gate answer, recipients and notifications."""
    runtime = obj.runtime()
    app = runtime.app
    status = models.org_status(app, org_id)
    limits = runtime.settings.limits_for(status.plan)
    answer = runtime.gate.check(org_id)
    days = models.org_usage_days(app, org_id, status.cycle.start)
    data: dict[str, Any] = {
        "id": status.id, "name": status.name, "plan": status.plan, "paid": status.paid,
        "subscription_status": status.subscription_status,
        "stripe_customer_id": status.stripe_customer_id, "anchor_day": status.anchor_day,
        "cycle": f"{status.cycle.start} .. {status.cycle.end} (resets {status.cycle.end})",
        "recorded_cycle_start": status.recorded_cycle_start, "cycle_usage": status.cycle_usage,
        "limits": {"included": limits.included, "notify_at": list(limits.notify_at),
                   "block_at": limits.block_at},
        "threshold_state": status.threshold_state, "state_changed_at": status.state_changed_at,
        "usage_updated_at": status.usage_updated_at,
        "ingestion": "allowed" if answer.allowed else "blocked",
        "enforcement": "on" if runtime.settings.enforce else "shadow mode",
        "recipients": [r.email for r in notify.recipients(app, org_id)],
        "usage_by_day": {str(day): units for day, units in days[-7:]},
        "notifications": notify.notifications_for(app, org_id),
    }
    obj.emit(data, title=f"organization {org_id}")


@metering.command("metrics")
@click.pass_obj
def metrics_command(obj: Context) -> None:
    """Billing figures: emails, org states, Stripe events, watermark lag, last runs."""
    from oncely_billing.metrics import snapshot

    obj.emit(snapshot(obj.runtime().app), title="billing")


stripe_cli.register(metering)
reconcile_cli.register(metering)


def main(argv: Sequence[str] | None = None) -> None:
    """Standalone entry point: ``python -m oncely_billing.cli``."""
    try:
        metering.main(args=list(argv) if argv is not None else None, prog_name="oncely metering",
                      standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("oncely metering: interrupted", err=True)
        raise SystemExit(130) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except oncely.OncelyError as exc:
        click.echo(f"oncely metering: error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    main()
