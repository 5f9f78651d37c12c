"""One frozen settings object. Every option has a documented default and an environment fallback.

Precedence: an explicit argument, then the environment variable, then the default.

=========================  ===============================  ========================
option (environment)       default                          meaning
=========================  ===============================  ========================
database_url               sqlite:///oncely.db              store URL
lease_ttl                  30                               seconds a lease lasts
poll_interval              1.0                              longest idle wait
concurrency                16                               handler threads
prefetch                   512                              jobs claimed beyond free threads
prefetch_wait              1.0                              seconds a claimed job may wait
                                                            for a thread before it is
                                                            released to other workers
shutdown_grace             30                               seconds to finish on stop
leader_ttl                 15                               leader lease seconds
maintenance_interval       5                                prune period
enqueue_interval           0.5                              slot check period
keep_succeeded_seconds     86400 (1 day)                    succeeded: kept at most
keep_succeeded             100000                           succeeded: newest kept
keep_failed_seconds        15552000 (180 days)              dead letters: kept at most
keep_failed                10000                            dead letters: newest kept
keep_cancelled_seconds     604800 (7 days)                  cancelled: kept at most
keep_cancelled             10000                            cancelled: newest kept
ledger_keep_seconds        2592000                          ledger retention
watchdog_interval          60                               watchdog period
watchdog_webhook_url       (none)                           anomalies POSTed here
max_rescues                3                                rescues of one job, then failed
=========================  ===============================  ========================

Each option's environment variable is ``ONCELY_`` plus its name in capitals
(``ONCELY_LEASE_TTL``); an empty one counts as unset, except ``ONCELY_DATABASE_URL``: set but
blank (and no URL given), it is refused with one line (exit code 2) rather than taken for the
default file. The ``keep_*`` options are the retention of every queue that does not declare its
own (per queue: ``app.queue(name, retention=…)``); a finished job goes when it is older than its
state's age or beyond its state's count, whichever comes first.

Every duration (the ``*_ttl``, ``*_interval``, ``*_seconds`` and ``shutdown_grace`` options) must
be a positive, finite number of seconds: NaN, infinity, zero and negatives are refused with one
line naming the setting (exit code 2 on the command line).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from oncely.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///oncely.db"
# Every duration in seconds: each must be positive and finite (NaN or infinity would store no
# expiry or overflow a timestamp; zero would spin or expire everything at once).
DURATIONS = (
    "lease_ttl", "poll_interval", "shutdown_grace", "leader_ttl", "maintenance_interval",
    "enqueue_interval", "keep_succeeded_seconds", "keep_failed_seconds", "keep_cancelled_seconds",
    "ledger_keep_seconds", "watchdog_interval", "prefetch_wait",
)


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    lease_ttl: float = 30.0
    poll_interval: float = 1.0
    concurrency: int = 16
    prefetch: int = 512  # at most: the claimer sizes the buffer to the handlers' pace
    prefetch_wait: float = 1.0
    shutdown_grace: float = 30.0
    leader_ttl: float = 15.0
    maintenance_interval: float = 5.0
    enqueue_interval: float = 0.5
    keep_succeeded_seconds: float = 86400.0
    keep_succeeded: int = 100_000
    keep_failed_seconds: float = 15_552_000.0
    keep_failed: int = 10000
    keep_cancelled_seconds: float = 604800.0
    keep_cancelled: int = 10000
    ledger_keep_seconds: float = 2592000.0
    watchdog_interval: float = 60.0
    watchdog_webhook_url: str = ""
    # An attempt lost to a dead or silent worker is given back; this bounds how often (then failed).
    max_rescues: int = 3

    def __post_init__(self) -> None:
        for name in DURATIONS:
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not 0 < value < math.inf):  # also refuses NaN (no comparison holds)
                raise ConfigError(f"setting {name} (ONCELY_{name.upper()}) must be a positive, "
                                  f"finite number of seconds, got {value!r}")
        if not _whole(self.concurrency) or self.concurrency < 1:
            raise ConfigError(f"setting concurrency (ONCELY_CONCURRENCY) must be a whole number "
                              f">= 1, got {self.concurrency!r}")
        for name in ("keep_succeeded", "keep_failed", "keep_cancelled", "max_rescues"):
            value = getattr(self, name)
            if not _whole(value) or value < 0:
                raise ConfigError(f"setting {name} (ONCELY_{name.upper()}) must be a whole "
                                  f"number >= 0, got {value!r}")
        if not _whole(self.prefetch) or self.prefetch < 0:
            raise ConfigError(f"setting prefetch (ONCELY_PREFETCH) must be a whole number >= 0, "
                              f"got {self.prefetch!r}")
        if self.lease_ttl < 1.0:
            raise ConfigError("setting lease_ttl (ONCELY_LEASE_TTL) must be at least 1 second, "
                              f"got {self.lease_ttl!r}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``ONCELY_*`` variables, then ``overrides`` (ignored when None)."""
        source = os.environ if env is None else env
        blank_url = source.get("ONCELY_DATABASE_URL")
        if blank_url is not None and not blank_url.strip() and overrides.get(
                "database_url") is None:
            # Not the default: a store the operator did not mean would be created here.
            raise ConfigError("environment ONCELY_DATABASE_URL is empty: give a URL such as "
                              "sqlite:///path/oncely.db, or unset it for the default "
                              f"{DEFAULT_DATABASE_URL}")
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


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name == "float":
            return float(raw)
        if type_name == "int":
            return int(raw)
        if type_name == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(
            f"environment ONCELY_{name.upper()}={raw!r} is not a valid {type_name}"
        ) from None
    return raw
