"""Settings of the billing workloads: one frozen object, every option with an env fallback.

==========================  ======================================  ==============================
option                      environment                             default
==========================  ======================================  ==============================
enforce                     ONCELY_METERING_ENFORCE                 false (shadow mode)
billing_url                 ONCELY_METERING_BILLING_URL             https://app.example.com/...
reconcile_hour              ONCELY_METERING_RECONCILE_HOUR          3 (UTC)
source_timeout              ONCELY_METERING_SOURCE_TIMEOUT          120 seconds per usage query
source_attempts             ONCELY_METERING_SOURCE_ATTEMPTS         4
gate_ttl                    ONCELY_METERING_GATE_TTL                30 seconds
gate_refresh                ONCELY_METERING_GATE_REFRESH            1 second (generation check)
gate_timeout                ONCELY_METERING_GATE_TIMEOUT            0.5 s budget per store read
gate_retry                  ONCELY_METERING_GATE_RETRY              5 s failing open after trouble
notify_sweep_base_delay     …_NOTIFY_SWEEP_BASE_DELAY               60 s, doubled per re-send
notify_sweep_max_delay      …_NOTIFY_SWEEP_MAX_DELAY                3600 s at most between them
fan_out                     ONCELY_METERING_FAN_OUT                 0: one run; N >= 2: N chunk jobs
fan_out_concurrency         …_FAN_OUT_CONCURRENCY                   4 chunks running, fleet-wide
fan_out_queue               …_FAN_OUT_QUEUE                         billing-chunks
fan_out_attempts            …_FAN_OUT_ATTEMPTS                      3 attempts per chunk
fan_out_retry_delay         …_FAN_OUT_RETRY_DELAY                   10 s, doubled per retry (jitter)
fan_out_poll                …_FAN_OUT_POLL                          1 s between the run's checks
smtp.host / port            ONCELY_SMTP_HOST / ONCELY_SMTP_PORT     localhost / 25
smtp.tls                    ONCELY_SMTP_TLS                         none (or starttls, ssl)
smtp.username / password    ONCELY_SMTP_USERNAME / _PASSWORD        unset
smtp.sender                 ONCELY_SMTP_FROM                        billing@example.com
==========================  ======================================  ==============================

Shadow mode (``enforce`` off, the default): usage is tracked and written, but the job sets no
state, sends no email and blocks nothing (a state left from an enforcing period is cleared).

Fan-out (``fan_out=N``, :mod:`oncely_billing.fanout`): the scheduled run plans N chunks of
organizations and waits for one child job per chunk, at most ``fan_out_concurrency`` of them
running at once across the fleet (``max_running`` of ``fan_out_queue``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import oncely

MAX_FAN_OUT = 256  # chunks of one run
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class PlanLimits:
    """Free-tier limits of one plan: included units, emails at ``notify_at``, block at
    ``block_at``."""

    included: int = 50_000
    notify_at: tuple[int, ...] = (50_000, 100_000, 200_000)
    block_at: int = 250_000

    def __post_init__(self) -> None:
        if not self.notify_at or any(t <= 0 for t in (*self.notify_at, self.block_at)):
            raise oncely.ConfigError("plan limits must be positive and notify at least once")
        if self.block_at < min(self.notify_at):
            raise oncely.ConfigError("a plan's block_at must not be below its first notify_at")

    @property
    def warn_at(self) -> int:
        """Usage from which the state is WARNING."""
        return min(self.notify_at)

    @property
    def thresholds(self) -> tuple[int, ...]:
        """Every threshold that sends an email, ascending (the block threshold included)."""
        return tuple(sorted({*self.notify_at, self.block_at}))


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "localhost"
    port: int = 25
    tls: str = "none"  # none | starttls | ssl
    username: str | None = None
    password: str | None = None
    sender: str = "billing@example.com"
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.tls not in ("none", "starttls", "ssl"):
            raise oncely.ConfigError(f"ONCELY_SMTP_TLS={self.tls!r}: use none, starttls or ssl")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SmtpSettings:
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        names = {"host": "HOST", "port": "PORT", "tls": "TLS", "username": "USERNAME",
                 "password": "PASSWORD", "sender": "FROM", "timeout": "TIMEOUT"}
        for attr, suffix in names.items():
            raw = source.get(f"ONCELY_SMTP_{suffix}")
            if raw:
                kind = cls.__dataclass_fields__[attr].type
                values[attr] = _convert(f"ONCELY_SMTP_{suffix}", raw, kind)
        return cls(**values)


def _default_plans() -> dict[str, PlanLimits]:
    return {"free": PlanLimits()}


@dataclass(frozen=True)
class MeteringSettings:
    enforce: bool = False
    plans: Mapping[str, PlanLimits] = field(default_factory=_default_plans)
    billing_url: str = "https://app.example.com/organization/{org_id}/settings/billing"
    chunk_size: int = 1000
    rollup_chunk_size: int = 5000
    reconcile_hour: int = 3
    rollup_retention_days: int = 70
    source_timeout: float = 120.0
    source_attempts: int = 4
    source_base_delay: float = 1.0
    source_max_delay: float = 30.0
    breaker_threshold: int = 5
    breaker_reset: float = 60.0
    gate_ttl: float = 30.0
    gate_refresh: float = 1.0
    gate_timeout: float = 0.5
    gate_retry: float = 5.0
    notify_sweep_base_delay: float = 60.0
    notify_sweep_max_delay: float = 3600.0
    queue: str = "billing"
    notify_queue: str = "notifications"
    thresholds_cron: str = "35 * * * *"
    job_timeout: float = 1800.0
    fan_out: int = 0
    fan_out_concurrency: int = 4
    fan_out_queue: str = "billing-chunks"
    fan_out_attempts: int = 3
    fan_out_retry_delay: float = 10.0
    fan_out_poll: float = 1.0
    smtp: SmtpSettings = field(default_factory=SmtpSettings)

    def __post_init__(self) -> None:
        if "free" not in self.plans:
            raise oncely.ConfigError("metering plans must define 'free' (the default limits)")
        if not 1 <= self.chunk_size <= 10_000 or self.rollup_chunk_size < 1:
            raise oncely.ConfigError("chunk sizes must be between 1 and 10,000")
        if not 0 <= self.reconcile_hour <= 23:
            raise oncely.ConfigError("reconcile_hour must be an hour of the day, 0..23")
        if self.source_timeout <= 0 or self.source_attempts < 1:
            raise oncely.ConfigError("source_timeout must be positive and source_attempts >= 1")
        if self.gate_timeout <= 0 or self.gate_retry < 0:
            raise oncely.ConfigError("gate_timeout must be positive and gate_retry >= 0")
        if not 0 <= self.fan_out <= MAX_FAN_OUT:
            raise oncely.ConfigError(f"fan_out must be 0 (one run) or a number of chunks up to "
                                     f"{MAX_FAN_OUT}, got {self.fan_out}")
        if self.fan_out_concurrency < 1 or self.fan_out_attempts < 1:
            raise oncely.ConfigError("fan_out_concurrency and fan_out_attempts must be >= 1")
        if self.fan_out_retry_delay < 0 or not self.fan_out_poll > 0:
            raise oncely.ConfigError("fan_out_retry_delay must be >= 0 and fan_out_poll positive")

    def limits_for(self, plan: str | None) -> PlanLimits:
        return self.plans.get(plan or "free") or self.plans["free"]

    def billing_link(self, org_id: int) -> str:
        return self.billing_url.format(org_id=org_id)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> MeteringSettings:
        """Settings from ``ONCELY_METERING_*`` / ``ONCELY_SMTP_*``, then ``overrides``."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {"smtp": SmtpSettings.from_env(source)}
        for item in fields(cls):
            raw = source.get(f"ONCELY_METERING_{item.name.upper()}")
            if raw is None or item.name in ("plans", "smtp"):
                continue
            values[item.name] = _convert(f"ONCELY_METERING_{item.name.upper()}", raw, item.type)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> MeteringSettings:
        return replace(self, **changes)


def _convert(name: str, raw: str, kind: Any) -> Any:
    text = str(kind)
    try:
        if text == "bool":
            lowered = raw.strip().lower()
            if lowered not in TRUE + FALSE:
                raise ValueError("expected true or false")
            return lowered in TRUE
        if text == "int":
            return int(raw)
        if text == "float":
            return float(raw)
    except ValueError as exc:
        raise oncely.ConfigError(f"{name}={raw!r} is invalid: {exc}") from None
    return raw
