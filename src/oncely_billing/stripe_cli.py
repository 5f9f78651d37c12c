"""What a human sees of Stripe metering: one read model, and the commands that print it.

:func:`status_report` is the read model (the CLI prints it; a dashboard can serve it as JSON):
watermark, backlog of due hours, last run, last reconciliation, failures by code, lost hours.
Commands, attached to the ``oncely metering`` group by :func:`register`:

* ``status`` — the report;
* ``stripe-failures [--code C] [--limit N]`` — meter events Stripe refused, newest first;
* ``stripe-retry-failures [--code C] [--org ID] [--yes]`` — mark refused events for sending
  again; the next run sends them first (after a fix on either side).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

import oncely
from oncely_billing import db, stripe_store
from oncely_billing.meter import MeterConfig, Plan, from_ms, to_ms

RECONCILE_FIGURES = ("orgs_checked", "late", "late_units", "corrections_sent", "refused",
                     "past_window", "past_window_units", "over_billed", "over_billed_units")


def _iso(ms: Any) -> str | None:
    return None if ms is None else from_ms(int(ms)).isoformat()


def status_report(app: oncely.App, config: MeterConfig | None = None,
                  now: datetime | None = None) -> dict[str, Any]:
    """Everything ``oncely metering status`` shows, JSON-safe."""
    now = now or app.clock.now()
    queries = stripe_store.ensure_schema(app, to_ms(now))
    with db.connection(app) as conn:
        mark = queries.one(conn, "stripe_watermark_get", stream=stripe_store.STREAM)
        last = queries.one(conn, "stripe_run_last")
        checked = queries.one(conn, "stripe_reconciliation_last")
        open_corrections = queries.one(conn, "stripe_corrections_open_count")
        failures = queries.all(conn, "stripe_failures_by_code")
        hours = queries.all(conn, "stripe_hours_summary")
    watermark = None if mark is None else from_ms(int(mark[0]))
    plan = Plan.make(watermark, now, config or MeterConfig())
    by_status = {str(row[0]): row for row in hours}
    lost = by_status.get("lost")
    reported = by_status.get("reported")
    return {
        "watermark": None if watermark is None else watermark.isoformat(),
        "watermark_updated_at": None if mark is None else _iso(mark[1]),
        "next_hour": plan.due[0].isoformat() if plan.due else None,
        "backlog_hours": len(plan.due),
        "would_be_lost_hours": len(plan.lost),
        "hours_reported": 0 if reported is None else int(reported[1]),
        "hours_lost": 0 if lost is None else int(lost[1]),
        "last_lost_hour": None if lost is None else _iso(lost[3]),
        "last_run": None if last is None else {
            "job_id": last[0], "attempt": last[1], "started_at": _iso(last[2]),
            "finished_at": _iso(last[3]), "outcome": last[4], "hours": last[5],
            "events": last[6], "note": last[7]},
        "last_reconciliation": None if checked is None else {
            "job_id": checked[0], "started_at": _iso(checked[2]), "finished_at": _iso(checked[3]),
            "window": [_iso(checked[4]), _iso(checked[5])], "outcome": checked[7],
            **dict(zip(RECONCILE_FIGURES, (int(value) for value in checked[8:]), strict=True))},
        "corrections_unanswered": 0 if open_corrections is None else int(open_corrections[0]),
        "failures": [
            {"code": row[0], "status": row[1], "events": int(row[2]),
             "oldest_hour": _iso(row[3]), "newest_hour": _iso(row[4])}
            for row in failures],
    }


def _app() -> oncely.App:
    """The app of the nearest enclosing command: an App passed as ``obj``, the metering group's
    runtime (``obj.runtime().app``), or the ``oncely`` command's ``obj.app()``."""
    ctx: click.Context | None = click.get_current_context()
    while ctx is not None:
        obj = ctx.obj
        if isinstance(obj, oncely.App):
            return obj
        runtime = getattr(obj, "runtime", None)
        app = getattr(runtime(), "app", None) if callable(runtime) else None
        if not isinstance(app, oncely.App):
            getter = getattr(obj, "app", None)
            app = getter() if callable(getter) else None
        if isinstance(app, oncely.App):
            return app
        ctx = ctx.parent
    raise oncely.ConfigError("no oncely app: run this as `oncely [--app module:app] metering …`")


def _as_json() -> bool:
    ctx: click.Context | None = click.get_current_context()
    while ctx is not None:
        if getattr(ctx.obj, "as_json", False):
            return True
        ctx = ctx.parent
    return False


def _echo_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2, default=str))


@click.command("status")
def status_command() -> None:
    """Stripe metering: watermark, backlog, last run, failures by code."""
    report = status_report(_app())
    if _as_json():
        _echo_json(report)
        return
    click.echo(f"watermark (last fully reported hour): {report['watermark'] or 'none yet'}")
    click.echo(f"backlog: {report['backlog_hours']} due hour(s); next {report['next_hour']}")
    if report["would_be_lost_hours"]:
        click.echo(f"WARNING: {report['would_be_lost_hours']} due hour(s) are past Stripe's "
                   "35-day limit and will be recorded as lost")
    click.echo(f"hours reported: {report['hours_reported']}; hours lost: {report['hours_lost']}"
               + (f" (last {report['last_lost_hour']})" if report["hours_lost"] else ""))
    run = report["last_run"]
    if run is None:
        click.echo("last run: never")
    else:
        click.echo(f"last run: job {run['job_id']} attempt {run['attempt']} started "
                   f"{run['started_at']}, {run['outcome']}: {run['hours']} hour(s), "
                   f"{run['events']} event(s) sent" + (f" — {run['note']}" if run["note"] else ""))
    checked = report["last_reconciliation"]
    if checked is None:
        click.echo("last reconciliation: never")
    else:
        click.echo(f"last reconciliation: job {checked['job_id']} started {checked['started_at']}, "
                   f"{checked['outcome']}: {checked['late']} late difference(s), "
                   f"{checked['corrections_sent']} correction(s) sent, {checked['past_window']} "
                   f"past Stripe's window, {checked['over_billed']} over-billed")
    if not report["failures"]:
        click.echo("failures: none")
    for row in report["failures"]:
        click.echo(f"failures: {row['events']} {row['status']} with code {row['code']} "
                   f"(hours {row['oldest_hour']} .. {row['newest_hour']})")


@click.command("stripe-failures")
@click.option("--code", help="Only this Stripe error code.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
def failures_command(code: str | None, limit: int) -> None:
    """Meter events Stripe refused (4xx), newest hour first."""
    app = _app()
    queries = stripe_store.ensure_schema(app, to_ms(app.clock.now()))
    with db.connection(app) as conn:
        rows = queries.all(conn, "stripe_failures_list", code=code, limit=limit)
    found = [{"identifier": r[0], "org_id": r[1], "event_name": r[2], "hour": _iso(r[3]),
              "status": r[4], "code": r[5], "message": r[6], "attempts": r[7],
              "updated_at": _iso(r[8])} for r in rows]
    if _as_json():
        _echo_json(found)
        return
    for row in found:
        click.echo(f"{row['hour']}  org {row['org_id']}  {row['event_name']}  {row['status']}  "
                   f"{row['code']}: {row['message']}")
    if not found:
        click.echo("(none)")


def _storable(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A text option that reaches a query: a NUL or a lone surrogate (undecodable bytes on the
    command line) is one line and exit 2, not a traceback or a store failure."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        storable = "\x00" not in value
    except UnicodeEncodeError:
        storable = False
    if not storable:
        raise oncely.ConfigError(f"{param.opts[0]} {ascii(value)[:40]} holds a NUL character "
                                 "or undecodable bytes")
    return value


@click.command("stripe-retry-failures")
@click.option("--code", help="Only events refused with this Stripe error code.")
@click.option("--org", "org_id", callback=_storable, help="Only this organization.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def retry_failures_command(code: str | None, org_id: str | None, yes: bool) -> None:
    """Send refused meter events again on the next run (after fixing their cause)."""
    what = " ".join(filter(None, [f"code {code}" if code else "", f"org {org_id}" if org_id
                                  else ""])) or "every failed event"
    if not yes and not click.confirm(f"Send again {what} on the next Stripe metering run?"):
        click.echo("nothing changed")  # a deliberate "no" is not an interruption (exit 0)
        return
    app = _app()
    now_ms = to_ms(app.clock.now())
    queries = stripe_store.ensure_schema(app, now_ms)
    with db.connection(app) as conn:
        count = queries.reset_failures(conn, now_ms, code, org_id)
    click.echo(f"{count} failed meter event(s) will be sent again on the next run")


def register(group: click.Group) -> None:
    """Attach the Stripe metering commands to the ``oncely metering`` group."""
    if "status" not in group.commands:
        group.add_command(status_command)
    else:
        group.add_command(status_command, "stripe-status")
    group.add_command(failures_command)
    group.add_command(retry_failures_command)
