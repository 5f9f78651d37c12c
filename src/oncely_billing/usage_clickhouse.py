"""The ClickHouse usage source: one SQL text (``sql/clickhouse/usage.sql``), two ways to run it.

* :class:`ServerRunner` — a ClickHouse server through ``clickhouse-connect`` (HTTP);
* :class:`ChdbRunner` — ClickHouse in this process through ``chdb`` (an embedded database
  directory); tests run the real ClickHouse SQL this way.

Only one chdb database directory can be open per process at a time (a chdb limitation): close a
:class:`ChdbRunner` before opening another path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import numpy as np

from oncely_billing import db
from oncely_billing.errors import UsageSourceError
from oncely_billing.usage import Granularity, GuardedSource, UsageCounts, naive_utc

TABLES = ("traces", "observations", "scores")


class ClickHouseRunner(Protocol):
    name: str

    def select(self, sql: str, params: dict[str, Any], timeout: float) -> UsageCounts: ...
    def command(self, sql: str) -> None: ...
    def insert_parquet(self, table: str, path: str) -> None: ...
    def close(self) -> None: ...


class ChdbRunner:
    """ClickHouse SQL on an embedded chdb database at ``path``."""

    def __init__(self, path: str | Path) -> None:
        from chdb import session

        self.path = str(path)
        self.name = f"chdb:{self.path}"
        self._session: Any = session.Session(self.path)  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()

    def select(self, sql: str, params: dict[str, Any], timeout: float) -> UsageCounts:
        query = f"{sql}\nSETTINGS max_execution_time = {max(1, int(timeout))}"
        with self._lock:
            text = str(self._session.query(query, "TabSeparated", params=params))
        values = np.array(text.split(), dtype=np.int64)
        if values.size % 5:
            raise UsageSourceError(f"{self.name}: unexpected usage result shape")
        matrix = values.reshape(-1, 5)
        return UsageCounts.from_columns([matrix[:, index] for index in range(5)])

    def command(self, sql: str) -> None:
        with self._lock:
            self._session.query(sql)

    def insert_parquet(self, table: str, path: str) -> None:
        escaped = path.replace("\\", "\\\\").replace("'", "\\'")
        self.command(db.q("clickhouse", "insert_parquet").format(table=table, path=escaped))

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None


class ServerRunner:
    """ClickHouse SQL on a server, through clickhouse-connect.

    The connection is made on first use, not when the runner is built: an unreachable server
    fails the run that needs it (retryable, like any transient source error), never the
    construction of an app or the start of a worker.
    """

    def __init__(self, client: Any = None, name: str = "clickhouse",
                 connect: Callable[[], Any] | None = None) -> None:
        self._client = client
        self._connect = connect
        self._lock = threading.Lock()
        self.name = name

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                if self._connect is None:
                    raise UsageSourceError(f"{self.name}: no client and no way to connect")
                self._client = self._connect()
            return self._client

    @classmethod
    def from_url(cls, url: str) -> ServerRunner:
        """``clickhouse://user:password@host:8123/database`` (``clickhouses://`` for HTTPS)."""
        parts = urlsplit(url)
        secure = parts.scheme == "clickhouses"
        options: dict[str, Any] = {
            "host": parts.hostname or "localhost",
            "port": parts.port or (8443 if secure else 8123),
            "username": unquote(parts.username or "default"),
            "password": unquote(parts.password or ""),
            "database": parts.path.lstrip("/") or "default",
            "secure": secure,
        }

        def connect() -> Any:
            import clickhouse_connect

            # The driver logs every failed request at ERROR before raising it; the source
            # reports that same failure once, in its own words.
            logging.getLogger("clickhouse_connect.driver").setLevel(logging.CRITICAL)

            return clickhouse_connect.get_client(**options)

        name = f"clickhouse://{options['host']}:{options['port']}{parts.path}"
        return cls(name=name, connect=connect)

    def select(self, sql: str, params: dict[str, Any], timeout: float) -> UsageCounts:
        result = self.client.query(
            sql, parameters=params, settings={"max_execution_time": max(1, int(timeout))}
        )
        columns = result.result_columns
        if not columns:
            return UsageCounts.empty()
        return UsageCounts.from_columns(columns)

    def command(self, sql: str) -> None:
        self.client.command(sql)

    def insert_parquet(self, table: str, path: str) -> None:
        data = Path(path).read_bytes()
        self.client.raw_insert(table, insert_block=data, fmt="Parquet")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class ClickHouseUsageSource(GuardedSource):
    """Usage from ClickHouse tables ``traces``, ``observations``, ``scores``."""

    def __init__(self, runner: ClickHouseRunner, **policy: Any) -> None:
        self.runner = runner
        self.name = runner.name
        super().__init__(**policy)

    @classmethod
    def chdb(cls, path: str | Path, **policy: Any) -> ClickHouseUsageSource:
        return cls(ChdbRunner(path), **policy)

    @classmethod
    def server(cls, url: str, **policy: Any) -> ClickHouseUsageSource:
        return cls(ServerRunner.from_url(url), **policy)

    def create_schema(self) -> None:
        for statement in db.q("clickhouse", "schema").split(";"):
            if statement.strip():
                self.runner.command(statement)

    def load_from_duckdb(self, duckdb_path: str | Path, workdir: str | Path) -> None:
        """Copy the events of a DuckDB usage file (e.g. from ``seed``) into these tables."""
        import duckdb

        self.create_schema()
        conn = duckdb.connect(str(duckdb_path), read_only=True)
        try:
            for table in TABLES:
                target = Path(workdir) / f"{table}.parquet"
                escaped = str(target).replace("'", "''")
                conn.execute(db.q("duckdb", "export_parquet").format(table=table, path=escaped))
                self.runner.insert_parquet(table, str(target))
                target.unlink()
        finally:
            conn.close()

    def _query(
        self, start: datetime, end: datetime, granularity: Granularity, timeout: float
    ) -> UsageCounts:
        params = {"start": _ch_time(start), "end": _ch_time(end)}
        return self.runner.select(
            db.q("clickhouse", f"usage_by_project_{granularity}"), params, timeout
        )

    def is_transient(self, exc: BaseException) -> bool:
        if super().is_transient(exc):
            return True
        text = str(exc).upper()
        permanent = ("SYNTAX_ERROR", "UNKNOWN_TABLE", "UNKNOWN_IDENTIFIER", "ILLEGAL_TYPE")
        if any(code in text for code in permanent):
            return False
        transient = ("TIMEOUT", "TOO_MANY_SIMULTANEOUS", "NETWORK", "CONNECTION", "MEMORY_LIMIT")
        return any(code in text for code in transient) or type(exc).__name__ in (
            "OperationalError", "StreamFailureError",
        )

    def close(self) -> None:
        self.runner.close()


def _ch_time(instant: datetime) -> str:
    return naive_utc(instant).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
