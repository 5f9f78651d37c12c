"""Chaos on a real fleet: six worker processes share a 1-second schedule while workers are
SIGKILLed and restarted, the leader is killed, and the worker running the job is SIGSTOPped past
its lease and then SIGCONTed (a zombie). On both stores.

What the handler did is read back from its own records (written through ``ctx.fenced()`` into the
job store) and from the side-effect database (fence rejections, written outside the fence), so
the assertions check invariants 1-4 of DESIGN.md on what really happened, not on the queue's own
bookkeeping:

1. at most one job and at most one successful record per slot;
2. no two records overlap in time, fences grow with time, and the zombie's write was rejected;
3. every slot from the first to the last record ends in the ledger with a final outcome, and none
   is ``missed``;
4. jobs of killed workers are rescued: nothing is left running or merely ``enqueued``.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from tests.apps import chaos
from tests.conftest import Workers, read_effects

import oncely
from oncely.store.base import LEADER_LEASE_KEY
from oncely.store.params import JobFilter
from oncely.testing import wait_until
from oncely.types import ErrorKind, JobState, SlotOutcome

# Fleets of worker processes: one at a time (one xdist worker), so they do not starve each other.
pytestmark = pytest.mark.xdist_group("fleet")

LEASE_TTL = 3.0
WORKERS = 6
# Seconds of chaos on a 1-second schedule: the short run deals each kind of blow at least once;
# the soak run (``pytest -m soak``, not part of the default run) keeps it up for five minutes.
CHAOS_SECONDS = (45, 300)
CHAOS_APP = "tests.apps.chaos:app"
FLEET_ENV = {
    "ONCELY_LEASE_TTL": str(LEASE_TTL),
    "ONCELY_LEADER_TTL": "3",
    "ONCELY_MAINTENANCE_INTERVAL": "0.5",
    "ONCELY_ENQUEUE_INTERVAL": "0.25",
    "ONCELY_POLL_INTERVAL": "0.5",
    "ONCELY_SHUTDOWN_GRACE": "5",
    "ONCELY_CONCURRENCY": "2",
}
FINAL_OUTCOMES = {SlotOutcome.RAN, SlotOutcome.FAILED, SlotOutcome.SKIPPED_OVERLAP,
                  SlotOutcome.COALESCED}


def owner_pid(owner: str | None) -> int | None:
    """The pid inside a worker id ``host:pid:suffix``."""
    if not owner:
        return None
    try:
        return int(owner.rsplit(":", 2)[1])
    except (IndexError, ValueError):
        return None


@dataclass
class Fleet:
    """Six worker slots; a killed worker is replaced by a new process in the same slot."""

    workers: Workers
    url: str
    effects: str
    app: str = CHAOS_APP
    env: dict[str, str] = field(default_factory=lambda: dict(FLEET_ENV))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def start(self, count: int) -> None:
        self.procs = [self._spawn() for _ in range(count)]

    def _spawn(self) -> subprocess.Popen[bytes]:
        return self.workers.start(self.url, self.effects, app=self.app, env=self.env)

    def index_of(self, pid: int | None) -> int | None:
        for index, proc in enumerate(self.procs):
            if proc.pid == pid and proc.poll() is None:
                return index
        return None

    def kill_and_restart(self, index: int, why: str) -> None:
        proc = self.procs[index]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.procs[index] = self._spawn()
        self.log.append(f"{time.time():.1f} SIGKILL {proc.pid} ({why}) -> {self.procs[index].pid}")

    def stop(self) -> list[int | None]:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


def all_registered(app: oncely.App, procs: list[subprocess.Popen[bytes]]) -> bool:
    """Every process has started its worker (past imports and signal handlers)."""
    return {proc.pid for proc in procs} <= {row.pid for row in app.store.worker_list()}


def running_jobs(app: oncely.App) -> list[oncely.Job]:
    return app.store.job_list(JobFilter(state=JobState.RUNNING, schedule=chaos.SCHEDULE, limit=50))


def fresh_running_job(app: oncely.App, fleet: Fleet, max_age: float = 0.15,
                      timeout: float = 8.0) -> tuple[int, oncely.Job] | None:
    """The fleet index of a worker whose handler started at most ``max_age`` seconds ago."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = datetime.now(UTC)
        for job in running_jobs(app):
            index = fleet.index_of(owner_pid(job.lease_owner))
            if index is None or job.started_at is None:
                continue
            if now - job.started_at <= timedelta(seconds=max_age):
                return index, job
        time.sleep(0.01)
    return None


def leader_index(app: oncely.App, fleet: Fleet) -> int | None:
    for lease in app.store.lease_list():
        live = lease.expires_at is not None and lease.expires_at > datetime.now(UTC)
        if lease.key == LEADER_LEASE_KEY and live:
            return fleet.index_of(owner_pid(lease.owner))
    return None


def make_zombie(app: oncely.App, fleet: Fleet) -> int | None:
    """SIGSTOP the worker running the job just after its handler began, for longer than the
    lease TTL, then SIGCONT it; returns its pid if a successor took the key while it slept.

    A process stopped inside a write transaction keeps its locks: on SQLite the database's write
    lock, on PostgreSQL the rows it touched (the key's lease row, when it was claiming or
    renewing). Then nobody can take the key over until it wakes up — a stall, not a zombie."""
    found = fresh_running_job(app, fleet)
    if found is None:
        fleet.log.append(f"{time.time():.1f} zombie: no fresh running job found")
        return None
    index, job = found
    proc = fleet.procs[index]
    os.kill(proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    fleet.log.append(f"{time.time():.1f} SIGSTOP {proc.pid} (job {job.id} fence {job.fence})")
    # Let the lease expire and a later slot take the key over (a new fence), so the zombie
    # wakes up into a world that moved on.
    time.sleep(LEASE_TTL + 2.5)
    try:
        wait_until(lambda: any(j.fence > job.fence for j in running_or_done_after(app, job)),
                   timeout=8, interval=0.05)
        took_over = True
    except AssertionError:
        took_over = False
    os.kill(proc.pid, signal.SIGCONT)
    fleet.log.append(f"{time.time():.1f} SIGCONT {proc.pid} after "
                     f"{time.monotonic() - stopped:.1f}s"
                     + ("" if took_over else ": a stall, nobody could take over (it was stopped "
                                             "holding a lock)"))
    return proc.pid if took_over else None


def running_or_done_after(app: oncely.App, job: oncely.Job) -> list[oncely.Job]:
    return [j for j in app.store.job_list(JobFilter(schedule=chaos.SCHEDULE, limit=20))
            if j.id > job.id and j.attempt > 0]


def unleash(app: oncely.App, fleet: Fleet, until: float) -> list[int]:
    """The chaos loop, until the monotonic instant ``until``; returns the zombies' pids."""
    rng = random.Random()
    zombies: list[int] = []
    moves = ["zombie", "kill_running", "kill_random", "kill_leader"]
    turn = 0
    while time.monotonic() < until - 4:
        move = moves[turn % len(moves)]
        turn += 1
        if move == "zombie":
            pid = make_zombie(app, fleet)
            if pid is not None:
                zombies.append(pid)
        elif move == "kill_running":
            found = fresh_running_job(app, fleet, max_age=0.3)
            if found is not None:
                fleet.kill_and_restart(found[0], f"running job {found[1].id}")
        elif move == "kill_leader":
            index = leader_index(app, fleet)
            if index is not None:
                fleet.kill_and_restart(index, "leader")
        else:
            fleet.kill_and_restart(rng.randrange(len(fleet.procs)), "random")
        time.sleep(rng.uniform(2.0, 3.5))  # let the fleet recover before the next blow
    while time.monotonic() < until:
        time.sleep(0.1)
    return zombies


def ledger(app: oncely.App) -> dict[float, SlotOutcome]:
    return {r.slot.timestamp(): r.outcome
            for r in app.store.ledger_list(chaos.SCHEDULE, limit=100_000)}


def settled(app: oncely.App, up_to: float) -> bool:
    """Every slot up to ``up_to`` has a final outcome and no job is left running."""
    outcomes = ledger(app)
    pending = [slot for slot, outcome in outcomes.items()
               if slot <= up_to and outcome == SlotOutcome.ENQUEUED]
    return not pending and not running_jobs(app)


@pytest.mark.parametrize("chaos_seconds", [
    pytest.param(CHAOS_SECONDS[0], marks=pytest.mark.timeout(240), id="short"),
    pytest.param(CHAOS_SECONDS[1], marks=[pytest.mark.soak, pytest.mark.timeout(600)], id="soak"),
])
def test_chaos_fleet_runs_each_slot_at_most_once_and_never_overlaps(
    any_url, effects_sqlite, workers, chaos_seconds
):
    began = time.monotonic()
    app = oncely.App(any_url)
    chaos.create_records_table(app.store)
    fleet = Fleet(workers, any_url, effects_sqlite)
    fleet.start(WORKERS)
    wait_until(lambda: chaos.read_records(app.store), timeout=45, interval=0.1,
               message="the first slot ran")

    zombies = unleash(app, fleet, until=time.monotonic() + chaos_seconds)
    chaos_ended = time.time()
    wait_until(lambda: settled(app, chaos_ended), timeout=30, interval=0.2,
               message="every slot up to the end of the chaos has a final outcome")
    wait_until(lambda: all_registered(app, fleet.procs), timeout=30, interval=0.1,
               message="the last restarted workers are up")  # so SIGTERM meets their handler
    codes = fleet.stop()
    elapsed = time.monotonic() - began

    records = chaos.read_records(app.store)
    jobs = app.store.job_list(JobFilter(schedule=chaos.SCHEDULE, limit=100_000))
    outcomes = ledger(app)
    rejected = read_effects(effects_sqlite, "rejected")
    counts = collections.Counter(str(o) for o in outcomes.values())
    story = (f"\noutcomes {dict(counts)}; {len(records)} records, {len(jobs)} jobs, "
             f"{len(rejected)} fence rejections, zombies {zombies}, {elapsed:.0f}s\n"
             + "\n".join(fleet.log))
    print(story)  # shown with -s or -rP: what the chaos did and how the fleet fared

    # 1. At most one job and one successful record per slot (and per job).
    jobs_per_slot = collections.Counter(job.slot for job in jobs)
    assert max(jobs_per_slot.values()) == 1, f"a slot became two jobs{story}"
    per_slot = collections.Counter(r["slot"] for r in records)
    doubled = {slot: n for slot, n in per_slot.items() if n > 1}
    assert not doubled, f"slots recorded more than once: {doubled}{story}"
    per_job = collections.Counter(r["job_id"] for r in records)
    assert max(per_job.values()) == 1, f"a job recorded twice{story}"

    # 2. The key never ran twice at once; each record's fence is newer than the one before;
    #    the zombie woke up, tried to write, and was refused.
    for before, after in itertools.pairwise(records):
        assert before["ended"] <= after["started"], f"records overlap: {before} {after}{story}"
        assert before["fence"] < after["fence"], f"fence went backwards: {before} {after}{story}"
    assert zombies, f"the chaos loop never managed to pause a running worker{story}"
    zombie_rejections = [row for row in rejected if row[4] in zombies]
    assert zombie_rejections, f"no zombie write was rejected{story}"

    # 3. Every slot from the first to the last record has a final ledger outcome; none missed.
    # The span runs from the first record to the end of the chaos, read from the ledger: the
    # last slots may end skipped or failed under a blow, and they must be final all the same.
    first = records[0]["slot"]
    last = max(slot for slot in outcomes if slot <= chaos_ended)
    assert last - first >= chaos_seconds - 10, (
        f"only {last - first:.0f} slots between the first record and the end{story}")
    expected = [first + step for step in range(round(last - first) + 1)]
    absent = [datetime.fromtimestamp(s, UTC).isoformat() for s in expected if s not in outcomes]
    assert not absent, f"slots without a ledger row: {absent}{story}"
    not_final = {s: str(outcomes[s]) for s in expected if outcomes[s] not in FINAL_OUTCOMES}
    assert not not_final, f"slots without a final outcome: {not_final}{story}"
    assert counts[SlotOutcome.MISSED] == 0, f"missed slots while the fleet was up{story}"

    # What ran is what the ledger says ran: a `ran` slot has its record; a record's slot ran,
    # or failed only because its worker died between the write and the completion.
    ran = {slot for slot, outcome in outcomes.items() if outcome == SlotOutcome.RAN}
    assert ran <= set(per_slot), f"slots marked ran without a record: {ran - set(per_slot)}{story}"
    # A record's slot ran; or failed because its worker died between the write and the
    # completion; or was re-run after that death (an interrupted slot runs again) and the re-run
    # found a newer slot running or done (skipped or coalesced).
    job_of_slot = {job.slot.timestamp(): job for job in jobs if job.slot is not None}
    interrupted = {ErrorKind.LEASE_EXPIRED, ErrorKind.WORKER_GONE, ErrorKind.LEASE_LOST}
    for s in per_slot:
        if outcomes[s] in (SlotOutcome.RAN, SlotOutcome.FAILED):
            continue
        job = job_of_slot.get(s)
        kinds = [error.kind for error in job.errors] if job else []
        assert outcomes[s] in (SlotOutcome.SKIPPED_OVERLAP, SlotOutcome.COALESCED) and any(
            kind in interrupted for kind in kinds), (
            f"slot {s} has a record but ended {outcomes[s]} (job errors {kinds}){story}")
    assert len(ran) >= chaos_seconds * 4 // 9, f"the fleet ran too few slots under chaos{story}"

    # 4. Nothing left behind, and the fleet still shuts down cleanly after all that.
    assert not running_jobs(app), f"jobs left running{story}"
    assert codes == [0] * WORKERS, f"exit codes {codes}{story}"
