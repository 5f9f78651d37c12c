"""Worker processes on PostgreSQL: a fleet draining a backlog exactly once, and a server restarted
under it (a throwaway cluster this test creates with initdb and restarts with pg_ctl, never the
machine's shared server).

Side effects are counted outside the job store: in a table of the machine's server for the
restart test (it must survive the restart), and in a schema of its own for the drain.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import (
    EFFECTS_TABLE,
    open_basic_app,
    postgres_url_or_skip,
    read_effects,
    state_counts,
    with_query,
)

from oncely.testing import wait_until
from oncely.types import JobState

# Fleets of worker processes: one at a time (one xdist worker), so they do not starve each other.
pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("fleet")]


@contextlib.contextmanager
def effects_schema(base: str, **options: str) -> Iterator[str]:
    """A schema holding the effects table; yields a URL whose connections write there."""
    import psycopg

    schema = f"oncely_fx_{uuid.uuid4().hex[:12]}"
    settings = " ".join([f"-c search_path={schema}", *(f"-c {k}={v}" for k, v in options.items())])
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path = {schema}")
        conn.execute(EFFECTS_TABLE)
    try:
        yield with_query(base, options=settings.replace(" ", "%20").replace("=", "%3D"))
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_four_workers_drain_20000_jobs_exactly_once(pg_schema, workers) -> None:
    url, base = pg_schema
    app = open_basic_app(url)
    app.migrate()
    # The effects table is the test's own ledger; its commits need not wait for the disk.
    with effects_schema(base, synchronous_commit="off") as effects:
        app.enqueue_many("record", [{"n": n} for n in range(20_000)])
        for _ in range(4):
            workers.start(url, effects, "--concurrency", "8")
        wait_until(lambda: state_counts(app)[JobState.SUCCEEDED] == 20_000, timeout=240,
                   interval=0.25, message="20000 jobs succeeded")
        assert workers.stop_all() == [0, 0, 0, 0]
        done = read_effects(effects, "record")
    keys = collections.Counter(key for _, key, *_ in done)
    assert len(done) == 20_000, "some job ran more than once or not at all"
    assert set(keys) == {str(n) for n in range(20_000)} and max(keys.values()) == 1
    assert len({pid for *_, pid, _, _ in done}) == 4, "the work was not shared by all four"
    import psycopg

    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(base) as conn:
        again = conn.execute(f"SELECT count(*) FROM {schema}.oncely_jobs WHERE attempt <> 1")
        assert again.fetchone() == (0,), "a job was claimed twice"


# a throwaway cluster --------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """A PostgreSQL cluster of the test's own, in a temporary directory, on a free port."""

    def __init__(self, initdb: str, pg_ctl: str) -> None:
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="oncely-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.log = self.dir / "server.log"
        # initdb refuses to run as root: the cluster then belongs to the postgres user.
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str, timeout: float = 60) -> None:
        done = subprocess.run([*self.as_user, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.strip()}\n{log}")

    def create(self) -> None:
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    postgres_url_or_skip()
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("initdb/pg_ctl not installed: cannot start a throwaway PostgreSQL cluster")
    server = Cluster(initdb, pg_ctl)
    try:
        server.create()
        yield server
    finally:
        server.destroy()


def test_workers_ride_out_restarts_of_the_server_and_run_every_job_once(
    cluster: Cluster, workers
) -> None:
    url = with_query(cluster.url, schema="oncely")
    app = open_basic_app(url)
    app.migrate()
    total = 1500
    app.enqueue_many("slow", [{"n": n, "seconds": 0.02} for n in range(total)])
    # The effects ledger lives on the machine's server, which this test never touches.
    with effects_schema(postgres_url_or_skip()) as effects:
        # A job runs once if its worker records it before its lease's local deadline, a sixth
        # of the TTL before expiry counted from the last renewal (renewals come every TTL / 3):
        # with 10 s an outage, stop and restart included, may last at least 5 s (with 5 s,
        # 2.5 s: too little for a restart on a loaded machine, and jobs ran twice).
        env = {"ONCELY_LEASE_TTL": "10"}
        for _ in range(3):
            workers.start(url, effects, "--concurrency", "4", env=env)
        # Two outages mid-drain: a fast shutdown (sessions terminated, like a service restart),
        # then a crash (immediate: no checkpoint, recovery on start).
        for mode, after in (("fast", total // 5), ("immediate", total // 2)):
            wait_until(lambda after=after: len(read_effects(effects, "slow")) >= after,
                       timeout=120, interval=0.05, message=f"{after} jobs ran")
            cluster.stop(mode)
            time.sleep(1.5)  # workers meet a refused connection, not just a dropped one
            cluster.start()
        app.store.close()
        app = open_basic_app(url)
        wait_until(lambda: state_counts(app)[JobState.SUCCEEDED] == total, timeout=180,
                   interval=0.25, message=f"{total} jobs succeeded after the restarts")
        assert all(proc.poll() is None for proc in workers.procs), "a worker exited"
        assert workers.stop_all() == [0, 0, 0]
        done = read_effects(effects, "slow")
    keys = collections.Counter(key for _, key, *_ in done)
    assert set(keys) == {str(n) for n in range(total)}
    assert max(keys.values()) == 1, [key for key, seen in keys.items() if seen > 1]
    for index in range(3):
        log = workers.log(index)
        # Each outage is logged once (per worker), then the recovery; no crash loop, no trace.
        outages = len(re.findall(r"store\.unavailable", log))
        assert 1 <= outages <= 4, log[-3000:]
        assert "store.recovered" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
