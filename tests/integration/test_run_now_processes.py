"""``app.run_now`` from real processes on every store: while one process runs a singleton (its
lease renewed past several TTLs), another is refused and leaves nothing queued."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.apps.run_now import build
from tests.conftest import ROOT

import oncely
from oncely.testing import wait_until

pytestmark = pytest.mark.xdist_group("fleet")


def launch(url: str, release: Path, name: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "tests.apps.run_now", url, str(release), name],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_a_second_process_is_refused_while_the_first_runs(any_url: str, tmp_path: Path) -> None:
    release = tmp_path / "release"
    app = build(any_url, release)
    try:
        app.migrate()
        first = launch(any_url, release, "one")
        running = wait_until(lambda: app.read.jobs(state="running", task="exclusive"),
                             timeout=60, message="the first run started")
        second = launch(any_url, release, "two")
        out, _ = second.communicate(timeout=60)
        assert out.strip().startswith("busy"), out
        assert f"job {running[0].id}" in out
        # The first run outlives several 2 s leases: the keeper renews it.
        wait_until(lambda: app.read.job(running[0].id).lease_expires_at
                   > running[0].lease_expires_at, timeout=30, message="a lease renewal")
        release.touch()
        out, _ = first.communicate(timeout=60)
        assert out.strip() == "ran succeeded", out
        jobs = app.read.jobs(task="exclusive")
        assert [(job.id, job.state) for job in jobs] == [
            (running[0].id, oncely.JobState.SUCCEEDED)]
    finally:
        release.touch()
        app.close()
