"""Every command docs/runbook.md quotes in a ``sh`` block runs, in order, against a real store
holding an incident (a schedule that ran 31 times in an hour, failed jobs), on both stores: each
exits as documented (0; ``doctor`` 1 when it finds problems), with no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.conftest import ROOT
from tests.observe_data import SCHEDULE, START, billing_app, incident

import oncely
from oncely.store.migrations import latest_version
from oncely.store.params import JobFilter
from oncely.types import JobState

RUNBOOK = ROOT / "docs" / "runbook.md"
ALLOWED = {"oncely doctor": {0, 1}}  # 1: it found the incident


def quoted_commands() -> list[str]:
    text = RUNBOOK.read_text("utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_runbook_quotes_commands_and_marks_the_others() -> None:
    commands = quoted_commands()
    assert len(commands) >= 15 and all(c.startswith("oncely ") for c in commands)
    schedule_levers = {c.split()[2] for c in commands if c.startswith("oncely schedules ")}
    assert {"pause", "resume", "backfill", "trigger", "history"} <= schedule_levers


def test_every_quoted_command_runs_against_a_real_store(any_url: str, tmp_path: Path) -> None:
    app = billing_app(any_url, oncely.FrozenClock(START))
    try:
        app.register_schedules()
        incident(app, workers=6)
        [failed, *_] = app.store.job_list(JobFilter(state=JobState.FAILED, limit=1))
        dialect = app.dialect
    finally:
        app.close()
    now = datetime.now(UTC)  # the commands run on the real clock: backfill refuses the future
    env = dict(os.environ, ONCELY_DATABASE_URL=any_url, PYTHONPATH=str(ROOT),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               SCHEDULE=SCHEDULE, QUEUE=failed.queue, TASK=failed.task, JOB_ID=str(failed.id),
               PREVIOUS_VERSION=str(latest_version(dialect) - 1), COLUMNS="200",
               FROM=(now - timedelta(hours=3)).isoformat(), TO=now.isoformat())
    env["ONCELY_APP"] = "tests.observe_data:billing_app_from_env"  # backfill, trigger build jobs
    for command in quoted_commands():
        result = subprocess.run(["bash", "-c", command], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        allowed = ALLOWED.get(command, {0})
        assert result.returncode in allowed, (command, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr, (command, result.stderr)


@pytest.mark.parametrize("command", ["oncely schedules pause", "oncely migrate --to"])
def test_the_levers_are_named_in_the_runbook(command: str) -> None:
    assert command in RUNBOOK.read_text("utf-8")
