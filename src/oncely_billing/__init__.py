"""oncely_billing: the billing workloads of a multi-tenant SaaS, run on oncely.

* the free-tier threshold job (hourly at :35): usage per billing cycle from a daily rollup,
  warnings and blocking, exactly-once emails through an outbox (:mod:`.thresholds`);
* usage sources: DuckDB, ClickHouse (server or chdb), SQL tables on the job store (:mod:`.usage`);
* the ingestion gate (:func:`ingestion_allowed`, ``GET /api/orgs/{id}/ingestion`` in :mod:`.web`);
* ``oncely metering …`` commands (:mod:`.cli`), the synthetic dataset (:mod:`.seed`).

It uses only oncely's public API (an import contract in pyproject.toml keeps it so).
"""

from oncely_billing.cycle import Cycle, billing_cycle, cycle_for_day
from oncely_billing.errors import (
    MeteringError,
    UnknownOrganization,
    UsageSourceError,
    UsageSourceUnavailable,
)
from oncely_billing.gate import GateAnswer, IngestionGate
from oncely_billing.migrations import migrate
from oncely_billing.runtime import (
    Metering,
    build_app,
    default_runtime,
    ingestion_allowed,
    install,
    metering_of,
    usage_source_from_url,
)
from oncely_billing.settings import MeteringSettings, PlanLimits, SmtpSettings
from oncely_billing.states import ThresholdState
from oncely_billing.thresholds import THRESHOLDS_SCHEDULE, THRESHOLDS_TASK
from oncely_billing.usage import (
    DuckDBUsageSource,
    GuardedSource,
    SQLUsageSource,
    UsageCounts,
    UsageSource,
)

__all__ = [
    "THRESHOLDS_SCHEDULE",
    "THRESHOLDS_TASK",
    "Cycle",
    "DuckDBUsageSource",
    "GateAnswer",
    "GuardedSource",
    "IngestionGate",
    "Metering",
    "MeteringError",
    "MeteringSettings",
    "PlanLimits",
    "SQLUsageSource",
    "SmtpSettings",
    "ThresholdState",
    "UnknownOrganization",
    "UsageCounts",
    "UsageSource",
    "UsageSourceError",
    "UsageSourceUnavailable",
    "billing_cycle",
    "build_app",
    "cycle_for_day",
    "default_runtime",
    "ingestion_allowed",
    "install",
    "metering_of",
    "migrate",
    "usage_source_from_url",
]
