"""Time, injected: every component asks a :class:`Clock` and SQL takes ``now`` as a parameter.

Three clocks:

* :class:`SystemClock` — wall time (UTC) and the process's monotonic clock.
* :class:`FrozenClock` — stands still until a test calls ``advance()`` or ``set()``; its
  ``sleep()`` advances it instead of waiting, so loops under test run instantly.
* :class:`WarpClock` — a simulated wall clock running ``speed`` times faster than real time from a
  shared ``origin`` (epoch seconds of real and simulated time), so several processes that share the
  same origin and speed agree on the simulated time without talking to each other.

Monotonic time is separate from wall time on purpose: lease deadlines kept by a worker use
``monotonic()``, which never jumps when the wall clock is corrected.

Two more tell real time and may be set right against the store's clock:

* :class:`SkewedClock` — real time off by a fixed number of seconds (``skew:+60``), the wall clock
  of a machine whose time is wrong; tests start worker processes with it.
* :class:`ServerAlignedClock` — wraps a clock that tells real time (``real_time = True``) and adds
  the offset the worker last measured to its store's server clock, so every ``now`` a worker
  passes to the store (lease grant, renewal, expiry, rescue, leadership) is the server's time
  (see :mod:`oncely.worker.serverclock`). Frozen and warp clocks are never aligned: their time is
  the test's or the simulation's, on purpose.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """Current wall time, timezone-aware UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


class SystemClock:
    """Real time."""

    real_time = True
    # Read several times per job: the C function itself, no Python frame around it.
    monotonic = staticmethod(time.monotonic)

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FrozenClock:
    """A clock that moves only when told to. Thread-safe."""

    def __init__(self, start: datetime | str | None = None) -> None:
        if start is None:
            start = datetime(2026, 1, 1, tzinfo=UTC)
        elif isinstance(start, str):
            start = datetime.fromisoformat(start)
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self._now = start.astimezone(UTC)
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float | timedelta) -> datetime:
        delta = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if delta < 0:
            raise ValueError("a frozen clock only moves forwards")
        with self._lock:
            self._now += timedelta(seconds=delta)
            self._mono += delta
            return self._now

    def set(self, when: datetime | str) -> datetime:
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        with self._lock:
            delta = (when - self._now).total_seconds()
            if delta < 0:
                raise ValueError("a frozen clock only moves forwards")
            self._now = when.astimezone(UTC)
            self._mono += delta
            return self._now


class WarpClock:
    """Simulated time running ``speed`` times faster than real time.

    ``sim_origin`` is the simulated instant that corresponds to the real instant ``real_origin``
    (epoch seconds). Processes built with the same three numbers agree on ``now()``.
    """

    def __init__(
        self, sim_origin: datetime, speed: float, real_origin: float | None = None
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        if sim_origin.tzinfo is None:
            sim_origin = sim_origin.replace(tzinfo=UTC)
        self.sim_origin = sim_origin.astimezone(UTC)
        self.speed = float(speed)
        self.real_origin = time.time() if real_origin is None else real_origin

    def now(self) -> datetime:
        elapsed = (time.time() - self.real_origin) * self.speed
        return self.sim_origin + timedelta(seconds=elapsed)

    def monotonic(self) -> float:
        return time.monotonic() * self.speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.speed)

    def to_spec(self) -> str:
        """A string another process can pass to :func:`clock_from_spec`."""
        return f"warp:{self.sim_origin.isoformat()}:{self.speed}:{self.real_origin}"


class SkewedClock(SystemClock):
    """Real time off by ``skew`` seconds (ahead when positive): a machine whose clock is wrong."""

    def __init__(self, skew: float) -> None:
        self.skew = timedelta(seconds=skew)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew


class ServerAlignedClock:
    """``base`` (a clock that tells real time) corrected by the offset last measured to the
    store's server clock: ``now() = base.now() + offset``. Thread-safe; monotonic time and sleeps
    are the base clock's."""

    real_time = True

    def __init__(self, base: Clock, offset: float = 0.0) -> None:
        self.base = base
        self._offset = timedelta(seconds=offset)
        self.monotonic: Callable[[], float] = base.monotonic  # the base's, without a hop

    @property
    def offset(self) -> float:
        """Seconds to add to the base clock to read the server's (negative: base is ahead)."""
        return self._offset.total_seconds()

    def set_offset(self, seconds: float) -> None:
        self._offset = timedelta(seconds=seconds)  # one attribute store: atomic for readers

    def now(self) -> datetime:
        return self.base.now() + self._offset

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)


def tells_real_time(clock: Clock) -> bool:
    """Whether ``clock`` claims to tell real time (so aligning it to a server makes sense)."""
    return bool(getattr(clock, "real_time", False))


def clock_from_spec(spec: str | None) -> Clock:
    """Build a clock from ``system``, ``skew:SECONDS`` (e.g. ``skew:+60``) or a
    ``warp:ORIGIN:SPEED:REAL_ORIGIN`` string (the value of ``ONCELY_CLOCK``); ConfigError for
    anything else."""
    from oncely.errors import ConfigError

    if not spec or spec == "system":
        return SystemClock()
    usage = ("use 'system', 'skew:SECONDS' or 'warp:ORIGIN:SPEED:REAL' (ISO time, speed > 0, "
             "epoch seconds)")
    if spec.startswith("skew:"):
        try:
            skew = float(spec[len("skew:") :])
            if not math.isfinite(skew):
                raise ValueError(spec)
        except ValueError:
            raise ConfigError(f"ONCELY_CLOCK={spec[:80]!r} is not a valid clock; {usage}") from None
        return SkewedClock(skew)
    if spec.startswith("warp:"):
        try:
            origin_text, speed_text, real_text = spec[len("warp:") :].rsplit(":", 2)
            origin, speed, real = (datetime.fromisoformat(origin_text), float(speed_text),
                                   float(real_text))
            if not (math.isfinite(speed) and math.isfinite(real) and speed > 0):
                raise ValueError(spec)
            clock = WarpClock(origin, speed, real)
            clock.now()  # an origin and speed that overflow a datetime fail here, not later
        except (ValueError, OverflowError):
            raise ConfigError(f"ONCELY_CLOCK={spec[:80]!r} is not a valid clock; {usage}") from None
        return clock
    raise ConfigError(f"unknown clock spec ONCELY_CLOCK={spec[:80]!r}; {usage}")
