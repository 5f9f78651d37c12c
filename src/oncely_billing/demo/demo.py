"""``oncely demo``: the billing incident replayed on oncely — unsafely, then guarded.

:func:`run` does the whole demo and returns its exit code:

1. builds the usage dataset (DuckDB) and a fresh store per phase (:mod:`.dataset`);
2. starts the local SMTP capture; each phase gets a fresh Stripe stub (:mod:`.services`);
3. runs the **unsafe** phase (the incident's job, :mod:`.incident_job`, under the incident's
   engine settings), then the **guarded** one (oncely's job with oncely's defaults), each a
   fleet of real worker processes through one simulated day on a shared warp clock
   (:mod:`.phase`);
4. measures both (:mod:`.measure`), prints the side-by-side report and writes
   ``report.json`` and ``report.html`` under ``--out`` (:mod:`.report`);
5. returns 0 when the guarded run held every invariant, else 1 (the reason is printed on one
   line: ``oncely demo: FAILED: …``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

import oncely
from oncely_billing.demo.dataset import Dataset, Prepared, build_usage, phase_urls, prepare_stores
from oncely_billing.demo.measure import invariants, measure
from oncely_billing.demo.phase import PhaseRun, run_phase
from oncely_billing.demo.plan import DemoOptions, Plan, phases
from oncely_billing.demo.report import render_terminal, summary, write_html, write_json
from oncely_billing.demo.services import MailCapture
from oncely_billing.settings import SmtpSettings

EXIT_OK, EXIT_FAILED = 0, 1
QUIET_LOGGERS = ("oncely", "mail.log", "stripe")
IGNORED_ENV = ("ONCELY_STRIPE_", "ONCELY_SMTP_", "ONCELY_METERING_", "ONCELY_CLOCK",
               "ONCELY_DATABASE_URL")


def run(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; 0 when the guarded run held every invariant, 1 otherwise."""
    console = console or Console()
    plan = options.plan()
    for name in QUIET_LOGGERS:  # the workers log to their files; the terminal gets the report
        logging.getLogger(name).setLevel(logging.WARNING)
    for key in [key for key in os.environ if key.startswith(IGNORED_ENV)]:
        del os.environ[key]  # the demo configures its own store, Stripe, SMTP and billing
    check_dependencies()
    plan.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    console.print(intro(plan))
    mail = MailCapture().start()
    runs: dict[str, PhaseRun] = {}
    try:
        with bars(console) as progress:
            dataset = build_usage(plan, progress)
            urls = phase_urls(plan)
            smtp = SmtpSettings(host=mail.host, port=mail.port)
            prepared = prepare_stores(plan, dataset, urls, smtp, progress)
        for config in phases(plan):
            runs[config.name] = run_one(console, plan, config, urls[config.name],
                                        base_env(dataset, mail), mail)
    finally:
        mail.stop()
    results = {name: measure(plan, phase_run) for name, phase_run in runs.items()}
    checks = invariants(results["guarded"])
    report = summary(plan, dataset, prepared, runs, results, checks,
                     time.perf_counter() - began)
    write_json(plan.out / "report.json", report)
    write_html(plan.out / "report.html", report)
    render_terminal(console, report)
    failed = [(name, evidence) for name, held, evidence in checks if not held]
    if failed:
        name, evidence = failed[0]
        console.print(f"oncely demo: FAILED: the guarded run broke an invariant: {name} "
                      f"({evidence}); on a busy or slow machine, a lower --speed gives the fleet "
                      "more real time per simulated hour", style="bold red", soft_wrap=True)
        return EXIT_FAILED
    return EXIT_OK


def intro(plan: Plan) -> str:
    store = "PostgreSQL (a fresh schema per phase)" if plan.store.startswith("postgres") \
        else "SQLite (a fresh file per phase)"
    return (f"[bold]oncely demo[/bold]: {plan.orgs:,} organizations, {plan.workers} worker "
            f"processes, {plan.hours:g} simulated hours per phase at {plan.speed:g}x "
            f"(an hour every {3600 / plan.speed:.1f} s), store: {store}; output in {plan.out}")


def run_one(console: Console, plan: Plan, config: Any, url: str, env: dict[str, str],
            mail: MailCapture) -> PhaseRun:
    hours = plan.sim_seconds / 3600
    columns = (TextColumn("{task.description:<38}"), BarColumn(),
               TextColumn("{task.fields[clock]:>12}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(config.title, total=hours, clock="")

        def progress(done: float, label: str) -> None:
            bar.update(task, completed=done, clock=label)

        return run_phase(plan, config, url, env, mail, progress)


def base_env(dataset: Dataset, mail: MailCapture) -> dict[str, str]:
    return {
        "ONCELY_METERING_USAGE_URL": dataset.usage_url,
        "ONCELY_SMTP_HOST": mail.host,
        "ONCELY_SMTP_PORT": str(mail.port),
        "ONCELY_SMTP_TLS": "none",
        "ONCELY_LOG_LEVEL": "INFO",
    }


@contextmanager
def bars(console: Console) -> Iterator[Any]:
    """Progress bars for the dataset steps: ``progress(step, done, total)``."""
    columns = (TextColumn("{task.description:<38}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, TaskID] = {}
        labels = {"organizations": "usage dataset: organizations",
                  "events": "usage dataset: events (DuckDB)",
                  "job store": "stores: organizations, projects, members",
                  "the deployment before the day": "stores: the deployment before the day"}

        def progress(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(labels.get(step, step), total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield progress


def check_dependencies() -> None:
    missing = []
    for module, package in (("duckdb", "duckdb"), ("stripe", "stripe"), ("numpy", "numpy"),
                            ("aiosmtpd", "aiosmtpd")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise oncely.ConfigError(f"oncely demo needs {', '.join(missing)}: "
                                 "pip install 'oncely[demo]'")


__all__ = ["DemoOptions", "Prepared", "run"]
