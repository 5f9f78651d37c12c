"""The incident configuration on oncely, in real worker processes, on both stores.

The incident (``shared/reference/billing.md``): every process that started also added an immediate
one-off run beside the hourly schedule, failures were retried 5 times, and runs overlapped — ~31x
the expected executions per hour. Here the same configuration — a retrying task that sometimes
fails, six workers that each ask for an immediate run when they start, restarted several times —
runs on oncely with the guard (``app.trigger``): exactly one successful execution per slot that
ran, and no job that does not belong to a slot. The unguarded contrast (``task.enqueue()`` on
start), at small scale, runs the trigger slot more than once — one after the other, since a
scheduled task's manual jobs share the schedule's singleton key — so the guard is what matters.
They share it also when the enqueue comes above the schedule's declaration, on a store that never
held the schedule, with one-off and slot runs that would coincide (``tests.apps.early``).
"""

from __future__ import annotations

import collections
import itertools
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from tests.apps import chaos, incident
from tests.conftest import postgres_url_or_skip, read_effects, with_query

import oncely
from oncely.store.params import JobFilter
from oncely.testing import wait_until
from oncely.types import JobState, SlotOutcome

# Fleets of worker processes: one at a time (one xdist worker), so they do not starve each other.
pytestmark = pytest.mark.xdist_group("fleet")

APP = "tests.apps.incident:app"
EVERY = 3  # seconds: the guarded run covers many slots in a CI-sized test
FLEET_ENV = {
    "ONCELY_LEASE_TTL": "5",
    "ONCELY_LEADER_TTL": "3",
    "ONCELY_MAINTENANCE_INTERVAL": "0.5",
    "ONCELY_ENQUEUE_INTERVAL": "0.25",
    "ONCELY_POLL_INTERVAL": "0.5",
    "ONCELY_SHUTDOWN_GRACE": "10",
    "ONCELY_CONCURRENCY": "1",  # as in the incident: one job at a time per process
}


@pytest.fixture
def second_url(any_url: str, tmp_path) -> Iterator[str]:
    """Another fresh store of the same kind as ``any_url`` (for the unguarded contrast)."""
    if any_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'unguarded.db'}"
        return
    import psycopg

    base = postgres_url_or_skip()
    schema = f"oncely_t_{uuid.uuid4().hex[:12]}"
    yield with_query(base, schema=schema)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def open_store(url: str) -> oncely.App:
    app = oncely.App(url)
    chaos.create_records_table(app.store, incident.RECORDS)
    return app


def ledger(app: oncely.App) -> dict[float, SlotOutcome]:
    return {r.slot.timestamp(): r.outcome
            for r in app.store.ledger_list(incident.SCHEDULE, limit=100_000)}


def all_jobs(app: oncely.App) -> list[oncely.Job]:
    return app.store.job_list(JobFilter(limit=100_000))


def settled(app: oncely.App, up_to: float) -> bool:
    pending = [s for s, o in ledger(app).items() if s <= up_to and o == SlotOutcome.ENQUEUED]
    return not pending and not app.store.job_list(JobFilter(state=JobState.RUNNING))


def all_registered(app: oncely.App, procs: list) -> bool:
    """Every process has started its worker (past its start-up trigger and signal handlers)."""
    return {proc.pid for proc in procs} <= {row.pid for row in app.store.worker_list()}


def restart(workers, app: oncely.App, procs: list, index: int, url: str, effects: str,
            env: dict) -> None:
    """A deploy: SIGTERM (graceful drain), then a new process that asks for a run on start."""
    proc = procs[index]
    wait_until(lambda: all_registered(app, [proc]), timeout=30, interval=0.1,
               message=f"worker {proc.pid} is up")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, f"worker {proc.pid} did not stop cleanly"
    procs[index] = workers.start(url, effects, app=APP, env=env)


@pytest.mark.timeout(240)
def test_incident_configuration_runs_once_per_slot_with_the_guard_and_not_without(
    any_url, second_url, effects_sqlite, workers
):
    began = time.monotonic()
    # Guarded: six workers, each triggering the current slot when it starts, restarted 10 times.
    app = open_store(any_url)
    env = {**FLEET_ENV, "ONCELY_TEST_EVERY": str(EVERY), "ONCELY_TEST_START": "trigger"}
    procs = [workers.start(any_url, effects_sqlite, app=APP, env=env) for _ in range(6)]
    wait_until(lambda: chaos.read_records(app.store, incident.RECORDS), timeout=45,
               interval=0.1, message="the first slot ran")
    for round_ in range(5):
        time.sleep(4)  # let slots run (and fail, and retry) between deploys
        for index in (round_ % 6, (round_ + 3) % 6):
            restart(workers, app, procs, index, any_url, effects_sqlite, env)
    time.sleep(EVERY * 2)
    cutoff = time.time()
    wait_until(lambda: settled(app, cutoff), timeout=45, interval=0.2,
               message="every slot up to the cutoff has a final outcome")
    wait_until(lambda: all_registered(app, procs), timeout=30, interval=0.1,
               message="the last restarted workers are up")
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(30) for proc in procs] == [0] * 6

    records = chaos.read_records(app.store, incident.RECORDS)
    jobs = all_jobs(app)
    outcomes = {s: o for s, o in ledger(app).items() if s <= cutoff}
    per_slot = collections.Counter(r["slot"] for r in records if r["slot"] <= cutoff)
    counts = collections.Counter(str(o) for o in outcomes.values())
    retried = [job for job in jobs if job.attempt > 1]
    triggers = read_effects(effects_sqlite, "trigger")
    triggered = {row[2] for row in triggers if row[2] is not None}  # jobs a trigger created
    story = (f"\nguarded: outcomes {dict(counts)}, {len(records)} executions, {len(jobs)} jobs "
             f"({len(retried)} retried, {len(triggered)} created by one of {len(triggers)} "
             f"start-up triggers), {len(workers.procs)} worker starts, "
             f"{time.monotonic() - began:.0f}s")
    print(story)

    strays = [(job.id, job.task, job.schedule) for job in jobs if job.slot is None]
    assert not strays, f"jobs that belong to no slot: {strays}{story}"
    assert max(collections.Counter(job.slot for job in jobs).values()) == 1, story
    ran = {slot for slot, outcome in outcomes.items() if outcome == SlotOutcome.RAN}
    extra = {slot: n for slot, n in per_slot.items() if n != 1 or slot not in ran}
    assert not extra, f"executions per slot other than one: {extra}{story}"
    assert ran == set(per_slot), f"ran without an execution: {ran - set(per_slot)}{story}"
    assert counts[SlotOutcome.MISSED] == 0, story
    assert len(ran) >= 10, f"too few slots ran{story}"
    assert retried, f"no failure was retried: the test did not exercise retries{story}"
    assert len(triggers) == len(workers.procs) == 16, f"not every start triggered{story}"
    assert triggered, f"no start-up trigger created a job{story}"
    assert triggered <= {job.id for job in jobs if job.slot is not None}, story
    # A retried execution succeeded only once: the failing attempts left nothing behind.
    assert {r["job_id"] for r in records} >= {job.id for job in retried
                                              if job.state == JobState.SUCCEEDED}, story
    assert all(r["attempt"] == failures + 1 for r in records
               for failures in [incident.failures_planned(r["slot"], EVERY)]), story

    # Unguarded, at small scale: three workers each enqueue a one-off run on start.
    other = open_store(second_url)
    started_at = datetime.now(UTC)
    env = {**FLEET_ENV, "ONCELY_TEST_START": "enqueue"}  # hourly, as in the incident
    small = [workers.start(second_url, effects_sqlite, app=APP, env=env) for _ in range(3)]
    wait_until(lambda: len(chaos.read_records(other.store, incident.RECORDS)) >= 3, timeout=60,
               interval=0.1, message="the three start-up runs finished")
    for proc in small:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(30) for proc in small] == [0] * 3
    unguarded = chaos.read_records(other.store, incident.RECORDS)
    trigger_slot = incident.latest_slot(incident.SPEC, started_at)
    # the hour may turn while they start: then the new hour's slot is the one they record
    trigger_slots = {trigger_slot, incident.latest_slot(incident.SPEC, datetime.now(UTC))}
    per_slot = collections.Counter(r["slot"] for r in unguarded)
    one_offs = [job for job in all_jobs(other) if job.slot is None]
    contrast = (f"\nunguarded: {len(unguarded)} executions over slots "
                f"{ {datetime.fromtimestamp(s, UTC).isoformat(): n for s, n in per_slot.items()} } "
                f"(trigger slot {trigger_slot}), {len(one_offs)} one-off jobs")
    print(contrast)
    assert len(one_offs) == 3, contrast
    # Three runs within seconds of each other: all of them in the trigger slot, unless the hour
    # turned meanwhile — then at least two of them still share a slot.
    assert max(per_slot.values()) > 1, contrast
    if len(per_slot) == 1:
        assert any(slot is not None and per_slot[slot.timestamp()] == 3
                   for slot in trigger_slots), contrast
    # Even so, the one-off runs of a scheduled task share its singleton key: they queue behind
    # each other (and behind slot runs) instead of running two at once.
    assert {job.singleton_key for job in one_offs} == {thresholds_key()}, contrast
    ordered = sorted(unguarded, key=lambda r: r["started"])
    for before, after in itertools.pairwise(ordered):
        assert before["ended"] <= after["started"], f"one-off runs overlapped{contrast}"


def thresholds_key() -> str:
    return incident.thresholds.name


def test_one_offs_enqueued_above_the_schedule_never_overlap_a_slot_run(
    any_url, effects_sqlite, workers
):
    """Three workers each enqueue a one-off run at import, above ``app.schedule(...)``, on a
    store that never held the schedule; it fires every 2 s and each run takes 0.7 s, two handler
    threads per worker. The one-off jobs take the schedule's key (at enqueue once the schedule is
    stored, or when the first worker registers it), so no run overlaps another."""
    app = oncely.App(any_url)
    app.migrate()
    env = {"ONCELY_TEST_START": "enqueue", "ONCELY_TEST_EVERY": "2", "ONCELY_TEST_SECONDS": "0.7",
           "ONCELY_POLL_INTERVAL": "0.1", "ONCELY_ENQUEUE_INTERVAL": "0.25",
           "ONCELY_SHUTDOWN_GRACE": "5"}
    for _ in range(3):
        workers.start(any_url, effects_sqlite, "--concurrency", "2", app="tests.apps.early:app",
                      env=env)

    def ran(one_off: bool) -> int:
        return sum((key == "-") == one_off for _, key, *_ in read_effects(effects_sqlite, "usage"))

    wait_until(lambda: ran(True) == 3 and ran(False) >= 1, timeout=90, interval=0.2,
               message="the three one-off runs and a slot run")
    assert workers.stop_all() == [0, 0, 0]

    runs = sorted(read_effects(effects_sqlite, "usage"), key=lambda row: row[5])
    story = "\n".join(f"{key} job {job_id}: {started:.2f}..{ended:.2f}"
                      for _, key, job_id, _, _, started, ended in runs)
    assert len({row[2] for row in runs}) == len(runs), f"a job ran twice\n{story}"
    for before, after in itertools.pairwise(runs):
        assert before[6] <= after[5], f"two runs overlapped\n{story}"
    one_offs = [job for job in all_jobs(app) if job.slot is None]
    assert len(one_offs) == 3 and {job.singleton_key for job in one_offs} == {"usage"}, story
