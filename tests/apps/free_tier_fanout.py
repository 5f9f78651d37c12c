"""The billing app of the fan-out fleet test: the scenario's small plan limits, 4 chunks of which
2 run at once, usage from ``ONCELY_TEST_USAGE`` (DuckDB), the clock from ``ONCELY_CLOCK``; each
chunk pauses ``ONCELY_TEST_CHUNK_PAUSE`` seconds first, so that several workers take part."""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import oncely
from oncely_billing import DuckDBUsageSource, MeteringSettings, build_app, thresholds

FAN_OUT, CONCURRENCY = 4, 2


def settings() -> MeteringSettings:
    from tests.billing.conftest import small_settings

    return small_settings(fan_out=FAN_OUT, fan_out_concurrency=CONCURRENCY, fan_out_poll=0.05,
                          fan_out_retry_delay=0.0)


def make(url: str, usage: str, clock: oncely.Clock | None = None) -> oncely.App:
    return build_app(url, usage_source=DuckDBUsageSource(usage), settings=settings(),
                     clock=clock)


PAUSE = float(os.environ.get("ONCELY_TEST_CHUNK_PAUSE") or 0)
if PAUSE:
    _evaluate = thresholds.evaluate

    def _slow_evaluate(app: oncely.App, settings: MeteringSettings, as_of: datetime,
                       org_range: tuple[int, int] = thresholds.ALL_ORGS) -> Any:
        time.sleep(PAUSE)
        return _evaluate(app, settings, as_of, org_range)

    thresholds.evaluate = _slow_evaluate  # type: ignore[assignment]

app = make(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db",
           os.environ.get("ONCELY_TEST_USAGE") or "usage.duckdb")
