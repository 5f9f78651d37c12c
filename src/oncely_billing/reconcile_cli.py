"""``oncely metering reconcile [--dry-run] [--days N]``: bill late usage now, or list it.

Runs the reconciliation of Stripe metering (:mod:`oncely_billing.stripe_reconcile`) in this
process under the Stripe task's singleton lease (refused, with nothing left queued, while the
hourly run or another reconciliation holds it), then prints the differences as a table, or the
run's result as JSON with ``--json``. Exit codes:

== =========================================================================================
0  nothing left unbilled: no difference, or every late one within Stripe's 35-day window was
   sent (``--dry-run``: no difference found)
1  differences left: ``--dry-run`` found some; or some are past Stripe's window or over-billed
   (reported, never sent) or Stripe refused a correction; or the run was refused (the Stripe
   job is running) or failed (Stripe unavailable: what was written down is sent by the next run)
2  a usage mistake (bad option), or Stripe metering is not installed (``ONCELY_STRIPE_API_KEY``)
3  the usage source or the store failed
== =========================================================================================
"""

from __future__ import annotations

from typing import Any

import click

import oncely
from oncely_billing.errors import UsageSourceError
from oncely_billing.meter import TASK_NAME
from oncely_billing.stripe_cli import _app, _as_json, _echo_json


@click.command("reconcile")
@click.option("--dry-run", is_flag=True, help="List the differences; send and write nothing.")
@click.option("--days", type=click.IntRange(1, 400), default=None,
              help="UTC days to compare, up to the last reported hour (default 3, "
                   "ONCELY_STRIPE_RECONCILE_DAYS).")
def reconcile_command(dry_run: bool, days: int | None) -> None:
    """Compare what was billed to Stripe with the usage source now, per org and hour, and send
    late usage as corrections (each difference once)."""
    app = _app()
    if TASK_NAME not in app.tasks:
        raise oncely.ConfigError("Stripe metering is not installed on this app (set "
                                 "ONCELY_STRIPE_API_KEY)")
    try:
        job = app.run_now(app.get_task(TASK_NAME), by="cli", reconcile=True, days=days or 0,
                          dry_run=dry_run)
    except oncely.SingletonBusy as exc:
        raise click.ClickException(f"the Stripe metering job is running (one sender at a "
                                   f"time); try again when it ends ({exc})") from None
    if job.state != oncely.JobState.SUCCEEDED:
        message = (job.errors[-1].message if job.errors else "") or "no error recorded"
        kind, _, detail = message.partition(": ")
        line = (detail or message).splitlines()[0]
        if kind in ("UsageSourceError", "UsageSourceUnavailable"):  # exit 3, as run-thresholds
            raise UsageSourceError(f"the reconciliation failed, nothing was sent: {line}")
        raise click.ClickException(f"the reconciliation ended {job.state.value}: "
                                   f"{message.splitlines()[0]}")
    report: dict[str, Any] = job.result or {}
    if _as_json():
        _echo_json(report)
    else:
        _print(report)
    left = report["late"] if dry_run else 0
    if left or report["past_window"] or report["over_billed"] or report["refused"] or \
            report["left_for_next_run"]:
        raise SystemExit(1)


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    if report["window"] is None:
        console.print("nothing reported to Stripe yet: nothing to reconcile")
        return
    start, end = report["window"]
    table = Table(title=f"differences {start} .. {end}" + (" (dry run)" if report["dry_run"]
                                                             else ""))
    for column in ("hour", "org", "meter", "billed", "source", "diff", "what"):
        table.add_column(column, justify="right" if column in ("billed", "source",
                                                                "diff") else "left")
    what = {"late": "would send" if report["dry_run"] else "sent",
            "past_window": "past window", "over_billed": "over-billed"}
    for row in report["differences"]:
        number = f" c{row['corrections'] + 1}" if row["kind"] == "late" else ""
        table.add_row(row["hour"][:16].replace("T", " "), row["org_id"],
                      row["event_name"].removeprefix("tracing_"), str(row["on_record"]),
                      str(row["source"]), f"{row['units']:+d}", what[row["kind"]] + number)
    console.print(table)
    console.print(
        f"orgs compared {report['orgs_checked']}; late {report['late']} "
        f"({report['late_units']} units); corrections sent {report['corrections_sent']} "
        f"({report['duplicates']} already at Stripe), refused {report['refused']}; past "
        f"window {report['past_window']} ({report['past_window_units']} units); over-billed "
        f"{report['over_billed']} ({report['over_billed_units']} units)"
        + (f"; {report['left_for_next_run']} left for the next run"
           if report["left_for_next_run"] else ""))


def register(group: click.Group) -> None:
    group.add_command(reconcile_command)
