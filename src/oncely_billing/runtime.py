"""Wiring: the metering app factory, the per-app runtime, and usage sources from URLs.

The free-tier threshold job is always installed; the hourly Stripe metering job (``:05``) too
when ``ONCELY_STRIPE_API_KEY`` is set.

``build_app(url, usage_source=…)`` returns an :class:`oncely.App` with the billing tasks and
schedules registered; :func:`install` does the same on an app you already have. The runtime
(:class:`Metering`: settings, usage source, ingestion gate) is kept per app and found again with
:func:`metering_of`.

Usage-source URLs (``ONCELY_METERING_USAGE_URL``): ``duckdb:///path/usage.duckdb`` (or a plain
path ending in ``.duckdb``), ``chdb:///path/dir``, ``clickhouse://user:pass@host:8123/db``
(``clickhouses://`` for HTTPS), and ``sql`` for the tables on the job store.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import oncely
from oncely_billing import migrations, notify
from oncely_billing.fanout import install_fan_out, run_fanned_out
from oncely_billing.gate import IngestionGate
from oncely_billing.settings import MeteringSettings
from oncely_billing.sweep import SWEEP_TASK, install_sweeper
from oncely_billing.thresholds import THRESHOLDS_SCHEDULE, THRESHOLDS_TASK, run_free_tier
from oncely_billing.usage import DuckDBUsageSource, GuardedSource, SQLUsageSource, UsageSource

DEFAULT_USAGE_URL = "duckdb:///usage.duckdb"

_runtimes: weakref.WeakKeyDictionary[oncely.App, Metering] = weakref.WeakKeyDictionary()
_latest: list[Metering] = []
_lock = threading.Lock()


class Metering:
    """The billing workloads installed on one app."""

    def __init__(self, app: oncely.App, source: UsageSource, settings: MeteringSettings) -> None:
        self.app = app
        self.source = source
        self.settings = settings
        self.gate = IngestionGate(app, settings)
        if isinstance(source, GuardedSource):
            source.configure(settings)

    def ensure_schema(self) -> None:
        migrations.ensure_schema(self.app)

    @property
    def thresholds_task(self) -> oncely.Task:
        return self.app.tasks[THRESHOLDS_TASK]

    @property
    def send_task(self) -> oncely.Task:
        return self.app.tasks[notify.SEND_TASK]

    @property
    def sweep_task(self) -> oncely.Task:
        return self.app.tasks[SWEEP_TASK]

    def ingestion_allowed(self, org_id: int) -> bool:
        # no schema check here: the gate does it under its time budget and fails open
        return self.gate.allowed(org_id)


def install(
    app: oncely.App, usage_source: UsageSource, settings: MeteringSettings | None = None
) -> Metering:
    """Register the billing tasks and schedules on ``app``; returns its runtime."""
    settings = settings or MeteringSettings.from_env()
    with _lock:
        if app in _runtimes:
            raise oncely.ConfigError("oncely_billing is already installed on this app")
        runtime = Metering(app, usage_source, settings)
        _runtimes[app] = runtime
        _latest[:] = [runtime]

    def free_tier_thresholds(ctx: oncely.JobContext, full: bool = False,
                             fan_out: int | None = None) -> dict[str, Any]:
        parts = runtime.settings.fan_out if fan_out is None else fan_out
        if parts >= 2:  # one child job per chunk of organizations (oncely_billing.fanout)
            return run_fanned_out(ctx, runtime, parts, full=full)
        return run_free_tier(ctx, runtime, full=full)

    def send_notification(ctx: oncely.JobContext, outbox_id: int) -> dict[str, Any]:
        runtime.ensure_schema()
        return notify.deliver(ctx, runtime.settings, outbox_id)

    thresholds = app.task(
        name=THRESHOLDS_TASK, queue=settings.queue, singleton=True, timeout=settings.job_timeout,
        retry=oncely.RetryPolicy(attempts=3, backoff="exponential", base_delay=60.0, jitter=True),
    )(free_tier_thresholds)
    send_task = app.task(
        name=notify.SEND_TASK, queue=settings.notify_queue, timeout=120.0,
        retry=oncely.RetryPolicy(attempts=6, backoff="exponential", base_delay=30.0,
                                 max_delay=3600.0, jitter=True),
    )(send_notification)
    install_sweeper(app, settings, send_task)
    install_fan_out(app, runtime)
    app.schedule(THRESHOLDS_SCHEDULE, thresholds, cron=settings.thresholds_cron, tz="UTC",
                 overlap="skip", catch_up="latest")
    if os.environ.get("ONCELY_STRIPE_API_KEY"):
        # Without a key every hourly run would fail; with one, usage goes to Stripe meters.
        from oncely_billing.stripe_usage import install_stripe_usage_metering

        install_stripe_usage_metering(app, usage_source)
    return runtime


def build_app(
    url: str | None = None,
    *,
    usage_source: UsageSource | str | None = None,
    settings: MeteringSettings | None = None,
    clock: oncely.Clock | None = None,
    **overrides: Any,
) -> oncely.App:
    """An :class:`oncely.App` on ``url`` with the billing workloads installed.

    ``usage_source`` is a source or a usage URL (default: ``ONCELY_METERING_USAGE_URL``, else
    ``duckdb:///usage.duckdb``); ``settings`` default to :meth:`MeteringSettings.from_env` with
    ``overrides`` (e.g. ``enforce=True``) applied.
    """
    app = oncely.App(url, clock=clock)
    if settings is None:
        settings = MeteringSettings.from_env(**overrides)
    elif overrides:
        settings = settings.with_(**overrides)
    if usage_source is None or isinstance(usage_source, str):
        usage_url = usage_source or os.environ.get("ONCELY_METERING_USAGE_URL") or DEFAULT_USAGE_URL
        usage_source = usage_source_from_url(usage_url, app)
    install(app, usage_source, settings)
    return app


def metering_of(app: oncely.App) -> Metering:
    try:
        return _runtimes[app]
    except KeyError:
        raise oncely.ConfigError(
            "oncely_billing is not installed on this app: build it with "
            "oncely_billing.build_app() or call oncely_billing.install(app, source)"
        ) from None


def default_runtime() -> Metering:
    if not _latest:
        raise oncely.ConfigError("no metering app has been built in this process")
    return _latest[0]


def ingestion_allowed(org_id: int, app: oncely.App | None = None) -> bool:
    """May ``org_id`` ingest events now? (cached; see :mod:`oncely_billing.gate`)"""
    runtime = metering_of(app) if app is not None else default_runtime()
    return runtime.ingestion_allowed(org_id)


def usage_source_from_url(url: str, app: oncely.App | None = None) -> UsageSource:
    scheme, sep, rest = url.partition("://")
    if not sep and url.endswith(".duckdb"):
        return DuckDBUsageSource(url)
    if url in ("sql", "store", "sql://"):
        if app is None:
            raise oncely.ConfigError("the 'sql' usage source needs the app whose store holds it")
        return SQLUsageSource(app)
    if scheme == "duckdb":
        return DuckDBUsageSource(rest[1:] if rest.startswith("/") else rest)
    if scheme == "chdb":
        from oncely_billing.usage_clickhouse import ClickHouseUsageSource

        return ClickHouseUsageSource.chdb(rest[1:] if rest.startswith("/") else rest)
    if scheme in ("clickhouse", "clickhouses"):
        from oncely_billing.usage_clickhouse import ClickHouseUsageSource

        return ClickHouseUsageSource.server(url)
    raise oncely.ConfigError(
        f"usage source URL {url!r} is not supported: use duckdb:///path.duckdb, chdb:///dir, "
        "clickhouse://host:8123/db or sql"
    )
