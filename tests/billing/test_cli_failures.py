"""What a user sees when things go wrong: one line and the documented exit code, never a
traceback, and destructive commands that check before they destroy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from oncely_billing import build_app, models

from .conftest import small_settings


def metering(*args: str, stdin: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m oncely_billing.cli …`` in a real process."""
    full_env = {**os.environ, "ONCELY_METERING_SOURCE_ATTEMPTS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "oncely_billing.cli", *args], input=stdin,
                          capture_output=True, text=True, env=full_env, timeout=120)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_missing_duckdb_file_is_one_line_and_exit_3(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'o.db'}"
    result = metering("--database-url", store, "--usage", f"duckdb:///{tmp_path}/nope.duckdb",
                      "run-thresholds")
    assert result.returncode == 3, result.stderr
    line = one_line(result)
    assert "nope.duckdb does not exist" in line and "oncely metering seed" in line


def test_an_unreachable_clickhouse_fails_the_run_not_the_app(tmp_path: Path) -> None:
    url = f"clickhouse://default@127.0.0.1:{closed_port()}/default"
    app = build_app(f"sqlite:///{tmp_path / 'o.db'}", usage_source=url,
                    settings=small_settings())  # no connection is attempted here
    app.close()
    result = metering("--database-url", f"sqlite:///{tmp_path / 'o.db'}", "--usage", url,
                      "run-thresholds")
    assert result.returncode == 3, result.stderr
    assert "usage source clickhouse://127.0.0.1" in one_line(result)


def test_declining_stripe_retry_failures_is_not_an_interruption(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'o.db'}"
    result = metering("--database-url", store, "--usage", "sql", "stripe-retry-failures",
                      stdin="n\n")
    assert result.returncode == 0, result.stderr
    assert "nothing changed" in result.stdout


def seeded(tmp_path: Path) -> tuple[str, Path]:
    store = f"sqlite:///{tmp_path / 'o.db'}"
    usage = tmp_path / "u.duckdb"
    result = metering("--database-url", store, "seed", "--orgs", "20", "--days", "2",
                      "--usage", str(usage), "--end", "2026-03-30T10:40:00")
    assert result.returncode == 0, result.stderr
    return store, usage


@pytest.mark.parametrize("bad", ["{tmp}/no/such/dir/u.duckdb", "{tmp}"])
def test_seed_replace_with_a_bad_usage_path_destroys_nothing(tmp_path: Path, bad: str) -> None:
    store, usage = seeded(tmp_path)
    before = usage.read_bytes()
    result = metering("--database-url", store, "seed", "--replace", "--orgs", "5",
                      "--usage", bad.format(tmp=tmp_path))
    assert result.returncode == 2, result.stderr
    assert "--usage" in one_line(result)
    app = build_app(store, usage_source=f"duckdb:///{usage}")
    assert models.count_organizations(app) == 20  # nothing was deleted
    app.close()
    assert usage.read_bytes() == before


@pytest.mark.parametrize("args, fragment", [
    (["stripe-failures", "--code", "\udcff"],
     "--code contains a NUL character or a lone surrogate ('\\udcff')"),
    (["stripe-retry-failures", "--yes", "--code", "bad \udcfe"], "--code contains a NUL"),
    (["stripe-retry-failures", "--yes", "--org", "\udcff"], "--org contains a NUL"),
    (["orgs", "show", "99999999999999999999"],
     "organization id must be a whole number from 1 to 9223372036854775807"),
    (["orgs", "show", "0"], "organization id must be a whole number"),
])
def test_undecodable_text_and_huge_ids_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    """Undecodable bytes arrive as lone surrogates; an id beyond 64 bits used to be an
    OverflowError traceback. Both are refused as they are parsed, before any store is read,
    standalone and under ``oncely metering``."""
    store = f"sqlite:///{tmp_path / 'o.db'}"
    result = metering("--database-url", store, *args)
    assert result.returncode == 2, result.stderr
    assert fragment in one_line(result)
    attached = subprocess.run([sys.executable, "-m", "oncely", "--database-url", store,
                               "metering", *args], capture_output=True, text=True, timeout=120)
    assert attached.returncode == 2, attached.stderr
    assert fragment in one_line(attached)
    assert not (tmp_path / "o.db").exists()


@pytest.mark.parametrize("org", ["a\x00b", "\udc80"])
def test_a_stripe_retry_for_an_org_no_store_could_hold_is_one_line(
    store_url: str, org: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--org reaches a query: a NUL or undecodable bytes (a lone surrogate) used to end in a
    traceback (SQLite) or a store failure (PostgreSQL)."""
    from oncely.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--database-url", store_url, "metering", "--usage", "sql",
              "stripe-retry-failures", "--yes", "--org", org])
    assert done.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("oncely: error: --org contains a NUL character or a lone surrogate")
