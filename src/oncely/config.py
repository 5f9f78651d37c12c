"""One frozen settings object. Every option has a documented default and an environment fallback.

Precedence: an explicit argument, then the environment variable, then the default.

=========================  ==============================  ========  =================================
option                     environment                     default   meaning
=========================  ==============================  ========  =================================
database_url               ONCELY_DATABASE_URL             sqlite:///oncely.db
lease_ttl                  ONCELY_LEASE_TTL                30        seconds a lease lasts unrenewed
poll_interval              ONCELY_POLL_INTERVAL            1.0       longest idle wait between claims
concurrency                ONCELY_CONCURRENCY              4         handler threads per worker
shutdown_grace             ONCELY_SHUTDOWN_GRACE           30        seconds running jobs get on stop
leader_ttl                 ONCELY_LEADER_TTL               15        seconds the leader lease lasts
maintenance_interval       ONCELY_MAINTENANCE_INTERVAL     5         seconds between rescue/prune runs
enqueue_interval           ONCELY_ENQUEUE_INTERVAL         0.5       seconds between slot checks
keep_succeeded_seconds     ONCELY_KEEP_SUCCEEDED_SECONDS   86400     retention of succeeded jobs
keep_failed                ONCELY_KEEP_FAILED              10000     failed jobs kept (newest)
keep_cancelled_seconds     ONCELY_KEEP_CANCELLED_SECONDS   604800    retention of cancelled jobs
ledger_keep_seconds        ONCELY_LEDGER_KEEP_SECONDS      2592000   retention of slot ledger rows
=========================  ==============================  ========  =================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from oncely.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///oncely.db"


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    lease_ttl: float = 30.0
    poll_interval: float = 1.0
    concurrency: int = 4
    shutdown_grace: float = 30.0
    leader_ttl: float = 15.0
    maintenance_interval: float = 5.0
    enqueue_interval: float = 0.5
    keep_succeeded_seconds: float = 86400.0
    keep_failed: int = 10000
    keep_cancelled_seconds: float = 604800.0
    ledger_keep_seconds: float = 2592000.0

    def __post_init__(self) -> None:
        positive = (
            "lease_ttl",
            "poll_interval",
            "leader_ttl",
            "maintenance_interval",
            "enqueue_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting {name} must be positive, got {getattr(self, name)!r}")
        if self.concurrency < 1:
            raise ConfigError(f"setting concurrency must be >= 1, got {self.concurrency!r}")
        if self.shutdown_grace < 0:
            raise ConfigError("setting shutdown_grace must not be negative")
        if self.lease_ttl < 1.0:
            raise ConfigError("setting lease_ttl must be at least 1 second")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``ONCELY_*`` variables, then ``overrides`` (ignored when None)."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for item in fields(cls):
            raw = source.get(f"ONCELY_{item.name.upper()}")
            if raw is None or raw == "":
                continue
            values[item.name] = _parse(item.name, str(item.type), raw)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **{key: value for key, value in changes.items() if value is not None})


def _parse(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name == "float":
            return float(raw)
        if type_name == "int":
            return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment ONCELY_{name.upper()}={raw!r} is not a valid {type_name}"
        ) from None
    return raw
