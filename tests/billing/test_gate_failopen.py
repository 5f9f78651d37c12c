"""The gate owns cycle boundaries and fails open: a block ends with its cycle whatever the job
does, and a store that is stopped, unmigrated or black-holed never turns into a 404 or a 500."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import oncely
from oncely.testing import wait_until
from oncely_billing import DuckDBUsageSource, build_app, metering_of, models
from oncely_billing.gate import MAX_PROBES
from oncely_billing.web import ingestion_status

from .conftest import Events, load_scenario, make_app, run_thresholds, small_settings

LAST_SECOND_OF_MARCH = datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)
FIRST_INSTANT_OF_APRIL = datetime(2026, 4, 1, tzinfo=UTC)


def move_to(clock: oncely.FrozenClock, when: datetime) -> None:
    clock.advance(when - clock.now())


def test_a_block_ends_with_its_cycle_while_the_usage_source_is_down(
    store_url: str, clock: oncely.FrozenClock, events: Events, tmp_path: Path
) -> None:
    app = make_app(store_url, None, clock, events, gate_ttl=3600.0, gate_refresh=3600.0)
    load_scenario(app, events)
    run_thresholds(app)  # Charlie (anchor 1: cycle Mar 1 .. Apr 1) is BLOCKED
    runtime = metering_of(app)
    runtime.source = DuckDBUsageSource(tmp_path / "gone" / "usage.duckdb", attempts=1)

    move_to(clock, LAST_SECOND_OF_MARCH)
    status, body = ingestion_status(app, 3)
    assert status == 403 and body["resets_on"] == "2026-04-01"
    assert "resets on 2026-04-01" in body["message"]

    move_to(clock, FIRST_INSTANT_OF_APRIL)  # the cached refusal must not outlive its cycle
    from oncely.testing import run_job

    failed = run_job(runtime.thresholds_task, lease_ttl=120)  # the usage source is down
    assert failed.state != oncely.JobState.SUCCEEDED
    status, body = ingestion_status(app, 3)
    assert status == 200 and body["state"] is None and body["resets_on"] == "2026-05-01"
    assert models.org_status(app, 3).threshold_state == "BLOCKED"  # the job has not run
    move_to(clock, FIRST_INSTANT_OF_APRIL + timedelta(hours=5))
    assert runtime.gate.allowed(3)
    app.close()


def test_a_stopped_store_fails_open_from_the_stale_cache_or_allows(
    clock: oncely.FrozenClock, events: Events, tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    app = make_app(f"sqlite:///{folder / 'oncely.db'}", None, clock, events, gate_ttl=0.0,
                   gate_retry=0.0)
    load_scenario(app, events)
    run_thresholds(app)
    assert ingestion_status(app, 3)[0] == 403 and ingestion_status(app, 1)[0] == 200
    app.close()
    folder.rename(tmp_path / "moved")  # the store cannot be opened any more

    status, body = ingestion_status(app, 3)  # a stale block is honoured until its reset date
    assert status == 403 and body["resets_on"] == "2026-04-01"
    status, body = ingestion_status(app, 7)  # existing, never cached: allowed, never 404
    assert status == 200 and body["verified"] is False
    move_to(clock, FIRST_INSTANT_OF_APRIL)
    assert ingestion_status(app, 3)[0] == 200
    assert metering_of(app).gate.failed_open >= 3


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/missing/dir/oncely.db",
                                 "postgresql://postgres@127.0.0.1:{closed}/test"])
def test_a_fresh_process_with_an_unreachable_store_builds_and_fails_open(
    url: str, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    app = build_app(url.format(tmp=tmp_path, closed=closed),
                    usage_source=DuckDBUsageSource(tmp_path / "usage.duckdb"),
                    settings=small_settings())  # constructing touches no store
    status, body = ingestion_status(app, 3)
    assert status == 200 and body["ingestion"] == "allowed" and body["verified"] is False


@pytest.fixture
def black_hole() -> Iterator[socket.socket]:
    """A listening socket that never accepts: connections queue and nobody ever answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()  # resets the queued connections, so the hanging reads end


def queued_connections(sock: socket.socket) -> int:
    sock.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_a_black_holed_store_costs_one_probe_not_one_wait_per_request(
    black_hole: socket.socket, tmp_path: Path
) -> None:
    port = black_hole.getsockname()[1]
    app = build_app(f"postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=30",
                    usage_source=DuckDBUsageSource(tmp_path / "usage.duckdb"),
                    settings=small_settings(gate_timeout=0.2, gate_retry=3600.0))
    gate = metering_of(app).gate
    answers = [ingestion_status(app, org) for org in range(1, 21)]
    assert all(status == 200 and body["verified"] is False for status, body in answers)
    assert gate.failed_open == 20
    # every answer came back while the store had still not answered the first read, and the
    # gate did not send one read per request into the hole
    total = [0]

    def arrived() -> bool:
        total[0] += queued_connections(black_hole)
        return total[0] >= 1

    wait_until(arrived, timeout=30, message="the gate's one read reached the black hole")
    assert total[0] <= MAX_PROBES < 20


SECOND_PROCESS = """
import sys, time
from oncely_billing import build_app, DuckDBUsageSource, MeteringSettings
from oncely.clock import FrozenClock
from datetime import datetime
clock = FrozenClock(datetime.fromisoformat(sys.argv[2]))
app = build_app(sys.argv[1], usage_source=DuckDBUsageSource(sys.argv[3]), clock=clock,
                settings=MeteringSettings(enforce=True, gate_ttl=3600.0, gate_refresh=1.0,
                                          gate_retry=0.05))
from oncely_billing import metering_of
gate = metering_of(app).gate
deadline = time.monotonic() + 60
while not gate.check(3).verified and time.monotonic() < deadline:
    time.sleep(0.05)  # a cold start may overrun the gate's budget: it fails open meanwhile
print("blocked" if not gate.allowed(3) else "allowed", flush=True)
while not gate.allowed(3) and time.monotonic() < deadline:
    time.sleep(0.05)
print("allowed" if gate.allowed(3) else "still blocked", flush=True)
"""


def test_paying_unblocks_in_another_process_within_a_second(
    store_url: str, clock: oncely.FrozenClock, events: Events, tmp_path: Path
) -> None:
    app = make_app(store_url, None, clock, events)
    load_scenario(app, events)
    run_thresholds(app)
    script = tmp_path / "gate_process.py"
    script.write_text(textwrap.dedent(SECOND_PROCESS))
    other = subprocess.Popen(
        [sys.executable, str(script), app.url, clock.now().isoformat(), str(events.path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "blocked"  # cached there for an hour
        models.set_billing(app, 3, plan="pro", subscription_status="active")
        assert other.stdout.readline().strip() == "allowed"
    finally:
        other.kill()
        other.wait()
    app.close()
