"""Conformance: the previous release's code runs on the schema a rollback leaves, on every store.

The previous release is the code as it stood in this repository's history just before the first
migration this release adds (:data:`FIRST_NEW_MIGRATION`): its ``src/`` is taken out of git
(``git archive``) and run in a subprocess with ``PYTHONPATH`` pointing at it, against a store
that the current code filled and then rolled back with ``migrate(to=<its version>)``. It must
check the schema as its own, enqueue a job, run that job and one the current code enqueued
before the rollback, and fire its schedule. The current code then migrates up again and reads
what the old code wrote.

Without the history (git missing, not a checkout, or a shallow clone that does not reach the
commit) the test skips and says which; in a full clone a missing commit is a failure.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

import oncely
from oncely.store.base import Store
from oncely.types import JobState

ROOT = Path(__file__).resolve().parents[2]
# The first migration after the previous release; move it forward when a release is cut.
FIRST_NEW_MIGRATION = "0007_schedule_revisions"
MIGRATIONS = "src/oncely/store/sqlite/migrations"
TASK, QUEUE, SCHEDULE = "release.tick", "release", "release-every-second"

RELEASE_SCRIPT = textwrap.dedent('''
    """Runs with the previous release's oncely on PYTHONPATH: checks the schema, enqueues,
    runs a worker until its job, the job enqueued before the rollback and one slot of its
    schedule succeeded, and prints what it saw as JSON."""
    import json, sys, time

    import oncely
    from oncely.store.migrations import latest_version

    url, before = sys.argv[1], int(sys.argv[2])
    app = oncely.App(url)

    @app.task(name=%(task)r, queue=%(queue)r)
    def tick(ctx, n=0):
        return {"n": n}

    app.schedule(%(schedule)r, %(task)r, every=1, args={"n": -1})
    store = app.store
    version = store.schema_version()
    mine = app.enqueue(%(task)r, n=7).id
    worker = app.worker(concurrency=2, queues=[%(queue)r]).start()

    def state(job_id):
        job = store.job_get(job_id)
        return job.state.value if job else None

    def slot_ran():
        for record in store.ledger_list(%(schedule)r, limit=50):
            if record.job_id is not None and state(record.job_id) == "succeeded":
                return record.slot.isoformat()
        return None

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if state(mine) == state(before) == "succeeded" and slot_ran():
            break
        time.sleep(0.05)
    worker.stop(timeout=20)
    print(json.dumps({"oncely": oncely.__file__, "version": version,
                      "code_version": latest_version(store.dialect),
                      "mine": [mine, state(mine)], "before": state(before), "slot": slot_ran()}))
    app.close()
''') % {"task": TASK, "queue": QUEUE, "schedule": SCHEDULE}


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=60,
                          check=False)


def previous_release_commit() -> str:
    """The commit just before :data:`FIRST_NEW_MIGRATION` appeared on the main line (first
    parents), or a skip that says why the history cannot tell."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the previous release's code comes from git history")
    if _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout: no history to take the previous release from")
    shallow = _git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true"
    added = _git("log", "--first-parent", "--diff-filter=A", "--format=%H", "--",
                 f"{MIGRATIONS}/{FIRST_NEW_MIGRATION}.sql").stdout.split()
    parent = _git("rev-parse", "--verify", "--quiet", f"{added[-1].decode()}^1^{{commit}}"
                  ) if added else None
    if parent is None or parent.returncode != 0:
        if shallow:
            pytest.skip(f"shallow clone: the commit before {FIRST_NEW_MIGRATION} was added is "
                        "not in its history (git fetch --unshallow)")
        pytest.fail(f"no commit adds {MIGRATIONS}/{FIRST_NEW_MIGRATION}.sql on the main line, "
                    "or it has no parent: is FIRST_NEW_MIGRATION right?")
    return parent.stdout.decode().strip()


def extract_src(commit: str, into: Path) -> Path:
    archive = _git("archive", "--format=tar", commit, "src")
    assert archive.returncode == 0, archive.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def test_the_previous_release_runs_on_the_rolled_back_schema(store: Store,
                                                             tmp_path: Path) -> None:
    commit = previous_release_commit()
    old_src = extract_src(commit, tmp_path / "release")
    steps = sorted(p.name for p in (old_src.parent / MIGRATIONS).glob("*.sql")
                   if not p.name.endswith(".down.sql"))
    old_version = int(steps[-1][:4])
    assert int(FIRST_NEW_MIGRATION[:4]) == old_version + 1, steps

    # the current code's rows: its declaration of the schedule, a job for the old worker's
    # queue and one for a queue the old worker leaves alone
    app = oncely.App(store.url)
    try:
        app.task(name=TASK, queue=QUEUE)(lambda ctx, n=0: {"n": n})
        app.schedule(SCHEDULE, TASK, every=1, args={"n": -1})
        app.register_schedules()
        before = app.enqueue(TASK, n=1).id
        other = app.enqueue_job(TASK, {"n": 2}, queue="elsewhere").id
    finally:
        app.close()
    assert store.migrate(to=old_version).to_version == old_version

    script = tmp_path / "release_app.py"
    script.write_text(RELEASE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(old_src)}
    env.pop("ONCELY_DATABASE_URL", None)
    ran = subprocess.run([sys.executable, str(script), store.url, str(before)], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr[-3000:]
    seen = json.loads(ran.stdout.strip().splitlines()[-1])
    assert seen["oncely"].startswith(str(old_src)), seen  # the previous release's code ran
    assert seen["version"] == seen["code_version"] == old_version
    assert seen["mine"][1] == "succeeded" and seen["before"] == "succeeded"
    assert seen["slot"] is not None, ran.stderr[-3000:]

    store.migrate()
    store.check_schema()
    for job_id in (before, seen["mine"][0]):
        job = store.job_get(job_id)
        assert job is not None and job.state == JobState.SUCCEEDED
    untouched = store.job_get(other)
    assert untouched is not None and untouched.state == JobState.AVAILABLE
    ledger = {r.slot.isoformat(): r for r in store.ledger_list(SCHEDULE, limit=100)}
    assert seen["slot"] in ledger
