"""Usage sources: unit counts (traces, observations, scores) per project and day or hour.

:class:`UsageSource` is the interface the billing jobs read usage through. Counts are by **event
time** (``traces.timestamp``, ``observations.start_time``, ``scores.timestamp``) over
``[start, end)``, in UTC buckets. One call is one query to the source, whatever the number of
projects or organizations, and the answer is columnar (:class:`UsageCounts`, numpy arrays), so a
month of a large deployment stays compact in memory.

Implementations: :class:`DuckDBUsageSource` (the embedded default) and :class:`SQLUsageSource`
(tables on the job store, for small deployments) here; ClickHouse in
:mod:`oncely_billing.usage_clickhouse`. Each query goes through :class:`GuardedSource`: a
timeout, retries with full-jitter exponential backoff and a circuit breaker
(:mod:`oncely_billing.resilience`). A source that stays down raises
:class:`~oncely_billing.errors.UsageSourceUnavailable`, before the job has written anything.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

import oncely
from oncely_billing import db
from oncely_billing.errors import UsageSourceError, UsageSourceUnavailable
from oncely_billing.resilience import Backoff, CircuitBreaker, CircuitOpen, call_with_retries
from oncely_billing.settings import MeteringSettings

log = logging.getLogger("oncely_billing.usage")

Granularity = Literal["day", "hour"]
BUCKET_SECONDS = {"day": 86400, "hour": 3600}
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class UsageCounts:
    """Unit counts per (project, bucket); ``bucket`` is the bucket's start in epoch seconds."""

    project_id: IntArray
    bucket: IntArray
    traces: IntArray
    observations: IntArray
    scores: IntArray

    @classmethod
    def empty(cls) -> UsageCounts:
        nothing = np.zeros(0, dtype=np.int64)
        return cls(nothing, nothing, nothing, nothing, nothing)

    @classmethod
    def from_columns(cls, columns: Sequence[Any]) -> UsageCounts:
        if len(columns) != 5:
            raise UsageSourceError(f"usage query returned {len(columns)} columns, expected 5")
        arrays = [np.asarray(column, dtype=np.int64) for column in columns]
        return cls(*arrays)

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> UsageCounts:
        if not rows:
            return cls.empty()
        matrix = np.asarray(rows, dtype=np.int64).reshape(len(rows), 5)
        return cls.from_columns([matrix[:, index] for index in range(5)])

    def __len__(self) -> int:
        return int(self.project_id.shape[0])

    @property
    def units(self) -> IntArray:
        return self.traces + self.observations + self.scores

    def total(self) -> int:
        return int(self.units.sum())


@runtime_checkable
class UsageSource(Protocol):
    """Where usage comes from. ``queries`` counts the queries sent (benchmarks report it)."""

    name: str
    queries: int

    def usage_by_project(
        self, start: datetime, end: datetime, granularity: Granularity = "day"
    ) -> UsageCounts: ...

    def close(self) -> None: ...


class GuardedSource:
    """Base of the built-in sources: one guarded query per call (timeout, retries, breaker).

    Subclasses implement :meth:`_query` (one attempt, honouring ``timeout``) and may refine
    :meth:`is_transient`. :meth:`configure` applies the app's settings unless the source was
    built with explicit ones.
    """

    name = "usage"

    def __init__(
        self,
        *,
        timeout: float | None = None,
        attempts: int | None = None,
        backoff: Backoff | None = None,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        defaults = MeteringSettings()
        self.explicit = timeout is not None or attempts is not None or backoff is not None
        self.timeout = timeout if timeout is not None else defaults.source_timeout
        self.backoff = backoff or Backoff(
            attempts if attempts is not None else defaults.source_attempts,
            defaults.source_base_delay, defaults.source_max_delay,
        )
        self.breaker = breaker or CircuitBreaker(
            f"usage source {self.name}", defaults.breaker_threshold, defaults.breaker_reset,
            on_change=self._breaker_changed,
        )
        self.sleep = sleep
        self.queries = 0
        self._lock = threading.Lock()

    def configure(self, settings: MeteringSettings) -> None:
        if self.explicit:
            return
        self.timeout = settings.source_timeout
        self.backoff = Backoff(
            settings.source_attempts, settings.source_base_delay, settings.source_max_delay
        )
        self.breaker.failure_threshold = settings.breaker_threshold
        self.breaker.reset_after = settings.breaker_reset

    def usage_by_project(
        self, start: datetime, end: datetime, granularity: Granularity = "day"
    ) -> UsageCounts:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("usage ranges must be timezone-aware")
        if granularity not in BUCKET_SECONDS:
            raise ValueError(f"granularity must be 'day' or 'hour', not {granularity!r}")
        if end <= start:
            return UsageCounts.empty()
        start, end = start.astimezone(UTC), end.astimezone(UTC)

        def attempt() -> UsageCounts:
            with self._lock:
                self.queries += 1
            return self._query(start, end, granularity, self.timeout)

        try:
            return call_with_retries(
                attempt, retry_on=self.is_transient, backoff=self.backoff,
                breaker=self.breaker, sleep=self.sleep, on_retry=self._retrying,
            )
        except CircuitOpen as exc:
            raise UsageSourceUnavailable(f"{exc}") from exc
        except (UsageSourceError, ValueError):
            raise
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}".strip()
            if self.is_transient(exc):
                raise UsageSourceUnavailable(
                    f"usage source {self.name} failed {self.backoff.attempts} times, last: "
                    f"{detail}"
                ) from exc
            raise UsageSourceError(f"usage source {self.name} query failed: {detail}") from exc

    def _query(
        self, start: datetime, end: datetime, granularity: Granularity, timeout: float
    ) -> UsageCounts:
        raise NotImplementedError

    def is_transient(self, exc: BaseException) -> bool:
        """Failures worth retrying: the source was unreachable, busy or too slow."""
        return isinstance(exc, OSError | TimeoutError | oncely.StoreUnavailable)

    def _retrying(self, attempt: int, exc: BaseException, delay: float) -> None:
        log.warning("usage source %s: attempt %d failed (%s); retrying in %.1fs",
                    self.name, attempt, exc, delay, extra={"event": "usage_source.retry"})

    def _breaker_changed(self, previous: str, state: str) -> None:
        log.warning("usage source %s: circuit %s -> %s", self.name, previous, state,
                    extra={"event": "usage_source.circuit"})

    def close(self) -> None:
        """Nothing to release by default."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def naive_utc(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(tzinfo=None)


class DuckDBUsageSource(GuardedSource):
    """Events in a DuckDB file (tables ``traces``, ``observations``, ``scores``).

    Each query opens the file read-only and closes it again, so several processes (workers,
    the dashboard) can read while nobody holds it for writing; the timeout interrupts the query.
    ``memory_limit`` bounds DuckDB's own memory (it spills to disk beyond it): a month of 50,000
    organizations aggregates as fast in 512 MB as without a limit.
    """

    def __init__(self, path: str | Path, *, read_only: bool = True,
                 memory_limit: str | None = "512MB", **policy: Any) -> None:
        self.path = str(path)
        self.read_only = read_only
        self.config: dict[str, str | bool | int | float | list[str]] = (
            {"memory_limit": memory_limit} if memory_limit else {})
        self.name = f"duckdb:{self.path}"
        super().__init__(**policy)

    def _query(
        self, start: datetime, end: datetime, granularity: Granularity, timeout: float
    ) -> UsageCounts:
        import duckdb

        if self.read_only and not Path(self.path).is_file():
            # not a transient failure: retrying cannot make the file appear
            raise UsageSourceError(
                f"usage file {self.path} does not exist: create it with `oncely metering seed` "
                "or point --usage / ONCELY_METERING_USAGE_URL at the right file")
        conn = duckdb.connect(self.path, read_only=self.read_only, config=self.config)
        done = threading.Event()

        def watchdog() -> None:
            # Interrupt until the query gives up: one interrupt sent just before the query
            # started would be lost.
            if not done.wait(timeout):
                while not done.is_set():
                    with contextlib.suppress(duckdb.Error):  # closed in the meantime
                        conn.interrupt()
                    done.wait(0.02)

        try:
            conn.execute(db.q("duckdb", "session_setup"))
            threading.Thread(target=watchdog, name="duckdb-timeout", daemon=True).start()
            sql = db.q("duckdb", f"usage_by_project_{granularity}")
            params = {"start": naive_utc(start), "end": naive_utc(end)}
            result = conn.execute(sql, params).fetchnumpy()
        except duckdb.InterruptException:
            raise TimeoutError(f"usage query exceeded the {timeout:g}s timeout") from None
        finally:
            done.set()
            conn.close()
        names = ("project_id", "bucket", "traces", "observations", "scores")
        return UsageCounts.from_columns([result[name] for name in names])

    def is_transient(self, exc: BaseException) -> bool:
        import duckdb

        transient = (duckdb.IOException, duckdb.ConnectionException, duckdb.InterruptException)
        return super().is_transient(exc) or isinstance(exc, transient)


class SQLUsageSource(GuardedSource):
    """Events in the job store's ``metering_traces`` / ``_observations`` / ``_scores`` tables."""

    def __init__(self, app: oncely.App, **policy: Any) -> None:
        self.app = app
        self.name = "sql:job-store"
        super().__init__(**policy)

    def _query(
        self, start: datetime, end: datetime, granularity: Granularity, timeout: float
    ) -> UsageCounts:
        dialect = db.sql_dialect(self.app)
        params = {"start": start.timestamp(), "end": end.timestamp(),
                  "bucket": BUCKET_SECONDS[granularity]}
        with db.connection(self.app) as conn, _statement_deadline(conn, dialect, timeout):
            rows = db.fetch_all(conn, dialect, "usage_by_project", params)
        return UsageCounts.from_rows(rows)

    def is_transient(self, exc: BaseException) -> bool:
        text = str(exc).lower()
        return super().is_transient(exc) or isinstance(exc, oncely.StoreError) or (
            "timeout" in text or "interrupted" in text or "canceling statement" in text
        )


@contextlib.contextmanager
def _statement_deadline(conn: Any, dialect: str, timeout: float) -> Iterator[None]:
    """Bound one statement's run time on the job store: PostgreSQL's statement_timeout for this
    transaction; on SQLite a progress handler that interrupts the statement."""
    db.run(conn, dialect, "statement_timeout", {"ms": str(int(timeout * 1000))})
    handler = getattr(conn, "set_progress_handler", None)
    if handler is None:
        yield
        return
    deadline = time.monotonic() + timeout
    handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        yield
    finally:
        handler(None, 0)
