"""Schedules in a fleet of real worker processes, on both stores: a rolling deploy from one
definition to another switches once and never fires both; operators pause, resume, trigger,
backfill, create and delete schedules from the command line and the API while workers run; a
stored schedule no worker can fire stops none of the others; a paused queue's backlog of slot jobs
obeys the schedules' policies when it is claimed."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient
from tests.conftest import oncely_cli, read_effects, with_query
from tests.integration.test_postgres_fleet import effects_schema
from tests.integration.test_schedule_validation import UNFIREABLE, store_raw

import oncely
from oncely import readmodel
from oncely.testing import wait_until
from oncely.types import SlotOutcome
from oncely.web.app import create_app

APP = "tests.apps.rolling:app"
TOKEN = "fleet-token-7c1e94d2b8"

pytestmark = pytest.mark.xdist_group("fleet")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request, tmp_path, effects_sqlite) -> Iterator[tuple[str, str]]:
    """(job store URL, side-effect database) on one kind of store."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}", effects_sqlite
        return
    pg = request.getfixturevalue("pg_schema")
    with effects_schema(pg[1]) as effects:  # small pools: a fleet shares the server's clients
        yield with_query(pg[0], pool_max="3"), effects


@pytest.fixture(autouse=True)
def _database_url_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_app points ONCELY_DATABASE_URL at the test's store (the rolling app reads it at
    import); afterwards the variable is as it was, so no later test in this process uses it."""
    monkeypatch.setenv("ONCELY_DATABASE_URL", "")  # recorded as it was, even when unset
    monkeypatch.delenv("ONCELY_DATABASE_URL")


def open_app(url: str) -> oncely.App:
    os.environ["ONCELY_DATABASE_URL"] = url
    from tests.apps import rolling

    app = oncely.App(url)
    for name, task in rolling.app.tasks.items():
        app.tasks[name] = task
    return app


def slots_run(effects: str, schedule: str = "pulse") -> list[datetime]:
    keys = [key for kind, key, *_ in read_effects(effects) if kind == schedule]
    counts = collections.Counter(keys)
    assert max(counts.values(), default=1) == 1, f"a slot ran twice: {counts.most_common(3)}"
    return sorted(datetime.fromisoformat(key) for key in keys)


def start(workers, url, effects, every):
    return workers.start(url, effects, app=APP, env={"ONCELY_TEST_EVERY": str(every)})


def more_runs(effects, count, schedule="pulse", timeout=60.0):
    have = len(slots_run(effects, schedule))
    wait_until(lambda: len(slots_run(effects, schedule)) >= have + count, timeout=timeout,
               interval=0.2, message=f"{count} more runs of {schedule}")


def cli(url: str, *args: str, app: str = APP) -> subprocess.CompletedProcess[str]:
    return oncely_cli(url, *args, app=app)


def test_a_rolling_deploy_switches_once_and_an_old_worker_never_brings_back_its_definition(
    stores, workers
):
    url, effects = stores
    app = open_app(url)
    app.migrate()
    procs = [start(workers, url, effects, 1) for _ in range(3)]
    more_runs(effects, 2)
    for index in range(3):  # replace the three workers one by one
        proc = procs[index]
        proc.terminate()
        assert proc.wait(60) == 0
        procs[index] = start(workers, url, effects, 2)
        more_runs(effects, 1)
    more_runs(effects, 2)
    row = app.store.schedule_get("pulse")
    assert (row.revision, row.spec["every"]) == (2, 2.0)
    old = start(workers, url, effects, 1)  # an old worker restarted
    wait_until(lambda: readmodel.disagreeing_workers(app.store, app.clock.now()).get("pulse"),
               timeout=60, interval=0.2, message="the old worker shows as disagreeing")
    [other] = readmodel.disagreeing_workers(app.store, app.clock.now())["pulse"]
    assert other["worker_id"].split(":")[1] == str(old.pid) and other["declared_revision"] == 1
    doctor = cli(url, "doctor")
    assert "declare another definition" in doctor.stdout and str(old.pid) in doctor.stdout
    # what operators see: the definition in force, its revision and who declares another
    [listed] = [s for s in json.loads(cli(url, "--json", "schedules").stdout)
                if s["name"] == "pulse"]
    assert listed["revision"] == 2 and listed["disagree"] == other["worker_id"], listed
    assert [w["worker_id"] for w in listed["disagreeing_workers"]] == [other["worker_id"]]
    page = TestClient(create_app(app), base_url="http://127.0.0.1").get("/schedules/pulse")
    assert page.status_code == 200
    assert "revision 2" in page.text and "live workers declaring another definition" in page.text
    assert f"{other['worker_id']} (revision 1)" in page.text
    more_runs(effects, 3)
    assert workers.stop_all() == [0] * len(workers.procs)
    row = app.store.schedule_get("pulse")
    assert (row.revision, row.spec["every"]) == (2, 2.0)
    slots = slots_run(effects)
    switch = row.switch_cursor
    assert switch is not None
    for earlier, later in itertools.pairwise(slots):
        period = 2 if later > switch else 1
        assert (later - earlier).total_seconds() >= period, (earlier, later, switch)
    assert all(int(slot.timestamp()) % 2 == 0 for slot in slots if slot > switch)


def test_operators_act_on_schedules_of_a_running_fleet(stores, workers):
    url, effects = stores
    app = open_app(url)
    app.migrate()
    start(workers, url, effects, 2)
    more_runs(effects, 1)
    # pause from the command line: slots are recorded paused, nothing runs
    paused = cli(url, "schedules", "pause", "pulse", "--reason", "maintenance")
    assert paused.returncode == 0, paused.stderr
    wait_until(lambda: [r for r in app.store.ledger_list("pulse") if r.outcome == "paused"][1:],
               timeout=60, interval=0.2, message="two paused slots")
    ran = set(slots_run(effects))
    assert not {r.slot for r in app.store.ledger_list("pulse") if r.outcome == "paused"} & ran
    watchdog = app.run_watchdog()
    assert not [f for f in watchdog.findings
                if f.schedule == "pulse" and f.kind.value in ("too_few", "too_many")]
    # resume through the API (token), then runs go on
    web = TestClient(create_app(app, token=TOKEN), base_url="http://127.0.0.1")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert web.post("/api/schedules/pulse/resume", headers=auth).status_code == 200
    assert web.post("/api/schedules/pulse/pause").status_code == 403  # no token, no action
    more_runs(effects, 2)
    # a dynamic schedule created while the worker runs fires once per slot
    created = web.post("/api/schedules", headers=auth,
                       json={"name": "org-7", "task": "pulse", "every": 2, "args": {"n": 7}})
    assert created.status_code == 200, created.text
    more_runs(effects, 3, schedule="org-7")
    # trigger and backfill an hourly dynamic schedule from the command line
    made = cli(url, "schedules", "create", "hourly", "--task", "pulse", "--cron", "0 * * * *")
    assert made.returncode == 0, made.stderr
    assert "enqueued" in cli(url, "schedules", "trigger", "hourly").stdout
    assert "nothing enqueued" in cli(url, "schedules", "trigger", "hourly").stdout
    now = datetime.now(UTC)
    frm = (now - timedelta(hours=3)).isoformat()
    filled = cli(url, "schedules", "backfill", "hourly", "--from", frm, "--to", now.isoformat())
    assert "2 slot job(s) enqueued" in filled.stdout, filled.stdout + filled.stderr
    try:
        wait_until(lambda: len(slots_run(effects, "hourly")) == 3, timeout=60, interval=0.2,
                   message="the triggered slot and two backfilled ones ran")
    except AssertionError as exc:
        ledger = [(r.slot.isoformat(), str(r.outcome), r.note)
                  for r in app.store.ledger_list("hourly")]
        raise AssertionError(f"{exc}; ledger {ledger}; worker log:\n"
                             f"{workers.log(0)[-3000:]}") from None
    too_many = cli(url, "schedules", "backfill", "hourly", "--from", "2020-01-01T00:00:00+00:00",
                   "--to", now.isoformat())
    assert too_many.returncode == 2 and "pass --yes" in too_many.stderr
    # delete: refused while a live worker declares it, allowed for a dynamic one
    refused = cli(url, "schedules", "delete", "pulse")
    assert refused.returncode == 2 and "live worker" in refused.stderr
    assert web.delete("/api/schedules/org-7", headers=auth).status_code == 200
    assert app.store.schedule_get("org-7") is None
    listed = json.loads(cli(url, "--json", "schedules").stdout)
    assert {(s["name"], s["origin"]) for s in listed} == {("pulse", "declared"),
                                                         ("hourly", "dynamic")}
    history = json.loads(cli(url, "--json", "schedules", "history", "pulse").stdout)
    assert {"schedule.paused", "schedule.resumed"} <= {h["event"] for h in history}
    by_token = f"dashboard:{hashlib.sha256(TOKEN.encode()).hexdigest()[:8]}"
    assert [h["by"] for h in history if h["event"] == "schedule.resumed"] == [by_token]
    assert next(h["by"] for h in history if h["event"] == "schedule.paused").count("@") == 1
    assert "history" in cli(url, "ledger", "pulse").stdout
    with contextlib.suppress(Exception):
        workers.stop_all()


def test_a_stored_schedule_no_worker_can_fire_stops_none_of_the_others(stores, workers):
    """Definitions written straight into the store (as an older release or a hand-written INSERT
    would): every=1e300, a priority beyond 32 bits, a queue with a terminal escape or of 9,000
    characters, an unknown key… The worker skips each, says so once, and fires ``pulse`` every
    second all the same; the readers show them invalid."""
    url, effects = stores
    app = open_app(url)
    app.migrate()
    for name, definition in UNFIREABLE.items():
        store_raw(app, name, "pulse", definition)
    start(workers, url, effects, 1)
    more_runs(effects, 4)
    wait_until(lambda: all(f"schedule.invalid schedule={name} " in workers.log(0)
                           for name in UNFIREABLE), timeout=60, interval=0.2,
               message="each invalid schedule reported")
    more_runs(effects, 2)  # many enqueuer runs later …
    log = workers.log(0)
    for name in UNFIREABLE:  # … still said once each
        assert log.count(f"schedule.invalid schedule={name} ") == 1, log[-3000:]
    assert "maintenance enqueuer failed" not in log and "Traceback" not in log
    assert "\x1b" not in log  # the escape is quoted, never written raw
    listed = cli(url, "--json", "schedules")
    assert listed.returncode == 0, listed.stderr
    states = {row["name"]: row["state"] for row in json.loads(listed.stdout)}
    assert states == {"pulse": "active", **{name: "invalid" for name in UNFIREABLE}}
    doctor = cli(url, "doctor")
    assert "Traceback" not in doctor.stderr
    assert "schedule huge-every: its stored definition (revision 1) is invalid" in doctor.stdout
    web = TestClient(create_app(app, token=TOKEN), base_url="http://127.0.0.1",
                     raise_server_exceptions=False)
    for path in ("/schedules", "/schedules/huge-priority", "/api/schedules", "/api/doctor",
                 "/api/schedules/long-queue"):
        assert web.get(path).status_code == 200, path
    assert workers.stop_all() == [0]
    for name in UNFIREABLE:
        assert not slots_run(effects, name)


BACKLOG_APP = "tests.apps.backlog:app"
BACKLOG = ("latest", "buffered")  # their schedules, both on the queue "reports"


def test_a_paused_queues_backlog_obeys_the_schedules_policies_when_claimed(stores, workers):
    """Two schedules fire every second while their queue is paused from the command line
    (``oncely queues pause``): their slot jobs are enqueued on time and wait, judged by every
    claim. When the queue resumes, ``latest`` runs one slot of the backlog, the older ones
    recorded ``coalesced``; ``buffer_one`` (catch_up ``all``) runs the oldest waiting slot and
    the one buffered behind it, the newer ones recorded ``skipped_overlap``; then slots run on
    time again. Runs are counted from the handlers' side effects."""
    url, effects = stores
    app = oncely.App(url)
    app.migrate()
    workers.start(url, effects, app=BACKLOG_APP,
                  env={"ONCELY_POLL_INTERVAL": "0.1", "ONCELY_ENQUEUE_INTERVAL": "0.2"})
    for name in BACKLOG:
        more_runs(effects, 1, name)
    paused = cli(url, "queues", "pause", "reports", app=BACKLOG_APP)
    assert paused.returncode == 0, paused.stderr
    paused_at = datetime.now(UTC)

    def due_while_paused(name: str) -> int:
        return len([r for r in app.store.ledger_list(name, limit=100) if r.slot > paused_at])

    wait_until(lambda: min(due_while_paused(name) for name in BACKLOG) >= 5, timeout=60,
               interval=0.2, message="five slots of each schedule came due in the pause")
    ran_before = {name: set(slots_run(effects, name)) for name in BACKLOG}  # all started
    before_resume = datetime.now(UTC)
    app.resume_queue("reports")
    resumed_at = datetime.now(UTC)
    for name in BACKLOG:
        wait_until(lambda name=name: any(s > resumed_at for s in slots_run(effects, name)),
                   timeout=60, interval=0.2, message=f"{name} runs on time again")
    assert workers.stop_all() == [0]

    for name in BACKLOG:
        ledger = {r.slot: r for r in app.store.ledger_list(name, limit=1000)}
        # the backlog: every slot enqueued before the resume that had not run before the pause
        backlog = sorted(slot for slot, r in ledger.items()
                         if r.recorded_at < before_resume and slot not in ran_before[name])
        raced = [slot for slot, r in ledger.items()  # enqueued while the resume was written
                 if before_resume <= r.recorded_at <= resumed_at]
        ran = [slot for slot in slots_run(effects, name) if slot in backlog]
        outcomes = collections.Counter(str(ledger[slot].outcome) for slot in backlog)
        story = f"{name}: backlog {[s.time().isoformat() for s in backlog]}, {dict(outcomes)}, " \
                f"ran {[s.time().isoformat() for s in ran]}, raced {raced}"
        assert len(backlog) >= 5, story
        assert outcomes[SlotOutcome.RAN] == len(ran), story
        if name == "latest":  # one run: the newest waiting slot
            assert ran == backlog[-1:] or (raced and ran == []), story
            assert outcomes[SlotOutcome.COALESCED] == len(backlog) - len(ran), story
            assert all("at claim" in (ledger[slot].note or "") for slot in backlog
                       if ledger[slot].outcome == SlotOutcome.COALESCED), story
        else:  # one starts and one waits behind it: the two oldest; the newer ones skipped
            assert ran == backlog[:2], story
            assert outcomes[SlotOutcome.SKIPPED_OVERLAP] == len(backlog) - 2, story
            assert all("at claim" in (ledger[slot].note or "") for slot in backlog[2:]), story
