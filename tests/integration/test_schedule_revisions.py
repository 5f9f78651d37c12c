"""The stored definition in force (revisions, the precedence of declarations, one switch at the
cursor) and the operators' actions on schedules (pause, resume, trigger, backfill, delete,
dynamic schedules), driven with a frozen clock on every store."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import oncely
from oncely import readmodel
from oncely.maintenance.enqueuer import SlotEnqueuer, register_schedules
from oncely.store.params import JobClaimParams, JobFilter, JobFinish, UpsertOutcome
from oncely.types import JobState, SlotOutcome

START = datetime(2026, 11, 30, 10, 0, 0, 500_000, tzinfo=UTC)


def make_app(url, clock, name="pulse", **schedule):
    app = oncely.App(url, clock=clock, settings=oncely.Settings(lease_ttl=10, leader_ttl=6))

    @app.task(name="tick")
    def tick(ctx, n=0):
        return n

    if schedule:
        app.schedule(name, "tick", **schedule)
    return app


@pytest.fixture
def clock():
    return oncely.FrozenClock(START)


def events_of(app):
    seen = []
    app.events.subscribe(lambda event: seen.append(event))
    return seen


def ledger(app, name="pulse"):
    return {r.slot: r.outcome for r in app.store.ledger_list(name, limit=10_000)}


def slot_jobs(app, name="pulse"):
    return sorted(j.slot for j in app.store.job_list(JobFilter(schedule=name, limit=10_000)))


def test_precedence_of_declarations(any_url, clock):
    old, new = make_app(any_url, clock, every=2), make_app(any_url, clock, every=3)
    assert register_schedules(old)["pulse"] == UpsertOutcome.CREATED
    assert register_schedules(old)["pulse"] == UpsertOutcome.UNCHANGED
    seen = events_of(new)
    assert register_schedules(new)["pulse"] == UpsertOutcome.UPDATED  # a new hash: revision 2
    row = new.store.schedule_get("pulse")
    assert (row.revision, row.spec["every"], len(row.hashes)) == (2, 3.0, 2)
    assert [e.name for e in seen if e.name.startswith("schedule.")] == ["schedule.revised"]
    # A restarted old worker never brings the old definition back.
    seen = events_of(old)
    assert register_schedules(old)["pulse"] == UpsertOutcome.SUPERSEDED
    [superseded] = [e for e in seen if e.name == "schedule.declaration_superseded"]
    assert (superseded.fields["declared_revision"], superseded.fields["in_force_revision"]) == (
        1, 2)
    assert old.store.schedule_get("pulse").revision == 2
    # Going back is an operator's explicit action: a new revision with the old definition.
    assert old.apply_schedule("pulse", by="ops@host") == UpsertOutcome.UPDATED
    row = old.store.schedule_get("pulse")
    assert (row.revision, row.spec["every"]) == (3, 2.0)
    assert register_schedules(new)["pulse"] == UpsertOutcome.SUPERSEDED  # 3 s was revision 2
    assert old.apply_schedule("pulse") == UpsertOutcome.UNCHANGED
    history = [(e["event"], e["by"]) for e in readmodel.schedule_history(old.store,
                                                                                  "pulse")]
    assert ("schedule.revised", "ops@host") in history
    assert ("schedule.declaration_superseded", None) in history


def test_every_worker_fires_the_stored_definition_and_switches_once_at_the_cursor(any_url, clock):
    old, new = make_app(any_url, clock, every=2), make_app(any_url, clock, every=3)
    register_schedules(old)
    for _ in range(6):
        clock.advance(1)
        SlotEnqueuer(old).run_once()
    before = slot_jobs(old)
    assert before and all(s.second % 2 == 0 for s in before)
    register_schedules(new)  # the rolling deploy's first new worker
    for _ in range(12):
        clock.advance(1)
        SlotEnqueuer(old).run_once()  # the old worker fires the stored (new) definition
        SlotEnqueuer(new).run_once()
    slots = slot_jobs(old)
    after = [s for s in slots if s > before[-1]]
    assert after and all(s.second % 3 == 0 for s in after)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= 2 and min(gaps[len(before):]) >= 3, slots
    # A slot of the new definition within one period of the old last run is coalesced.
    first_new = before[-1] + timedelta(seconds=1)
    if first_new.second % 3 == 0:
        assert ledger(old)[first_new] == SlotOutcome.COALESCED


def test_a_stale_enqueuer_records_nothing_after_a_revision(any_url, clock):
    old, new = make_app(any_url, clock, every=2), make_app(any_url, clock, every=3)
    register_schedules(old)
    clock.advance(3)
    SlotEnqueuer(old).run_once()
    row = old.store.schedule_get("pulse")
    assert row.cursor is not None
    register_schedules(new)
    clock.advance(10)
    from oncely.store.params import SlotEnqueue  # the guard an enqueuer with the old row uses

    stale = old.store.slot_enqueue(SlotEnqueue("pulse", row.cursor + timedelta(seconds=2),
                                               clock.now(), outcome=SlotOutcome.MISSED,
                                               revision=row.revision, expected_cursor=row.cursor))
    assert stale.stale and not stale.created


def test_pause_records_paused_slots_and_resume_applies_catch_up(any_url, clock):
    app = make_app(any_url, clock, every=60, catch_up="latest")
    register_schedules(app)
    clock.advance(61)
    SlotEnqueuer(app).run_once()
    assert len(slot_jobs(app)) == 1
    app.pause_schedule("pulse", "maintenance window", by="ops")
    clock.advance(300)
    SlotEnqueuer(app).run_once()
    outcomes = list(ledger(app).values())
    assert outcomes.count(SlotOutcome.PAUSED) == 5 and len(slot_jobs(app)) == 1
    assert app.store.schedule_get("pulse").paused
    # the watchdog expects nothing for paused slots
    found = [f for f in app.run_watchdog().findings
             if f.schedule == "pulse" and f.kind.value in ("too_few", "too_many")]
    assert found == [], found
    resumed = app.resume_schedule("pulse", by="ops")
    assert len(resumed) == 1 and len(slot_jobs(app)) == 2  # latest: the newest paused slot
    assert list(ledger(app).values()).count(SlotOutcome.PAUSED) == 4
    clock.advance(60)
    SlotEnqueuer(app).run_once()
    assert len(slot_jobs(app)) == 3
    names = [e["event"] for e in readmodel.schedule_history(app.store, "pulse")]
    assert {"schedule.paused", "schedule.resumed"} <= set(names)


def test_pause_is_stored_and_outlives_a_redeclaration(any_url, clock):
    app = make_app(any_url, clock, every=60)
    register_schedules(app)
    app.pause_schedule("pulse")
    again = make_app(any_url, clock, every=60)
    register_schedules(again)
    assert again.store.schedule_get("pulse").paused


def test_trigger_and_backfill_enqueue_each_slot_once(any_url, clock):
    app = make_app(any_url, clock, every=60, catch_up="none")
    register_schedules(app)
    clock.advance(600)
    handles = [app.trigger("pulse", by="a"), app.trigger("pulse", by="b")]
    assert sum(h is not None for h in handles) == 1  # the current slot, once
    SlotEnqueuer(app).run_once()  # nine slots late: with catch_up none they are missed
    assert list(ledger(app).values()).count(SlotOutcome.MISSED) == 9
    start, end = START, START + timedelta(seconds=600)
    made = app.backfill_schedule("pulse", start, end, by="ops")
    assert len(made) == 9  # every slot in range but the triggered one
    assert app.backfill_schedule("pulse", start, end) == []
    assert len(slot_jobs(app)) == 10
    with pytest.raises(oncely.ConfigError, match="pass --yes"):
        app.backfill_schedule("pulse", START - timedelta(days=1), end)
    with pytest.raises(oncely.ConfigError, match="in the future"):
        app.backfill_schedule("pulse", start, end + timedelta(hours=1))


@pytest.mark.parametrize("overlap, catch_up", [("buffer_one", "all"), ("skip", "latest"),
                                               ("skip", "none")])
def test_every_backfilled_slot_runs_in_turn_behind_the_key(any_url, clock, overlap, catch_up):
    """The jobs of a backfill wait for the task's singleton key one after another: the claim's
    policy pass leaves them alone whatever the schedule's overlap and catch-up, so each slot of
    the range runs once (none ends skipped beyond a buffer, coalesced or missed at claim)."""
    app = make_app(any_url, clock, every=60, overlap=overlap, catch_up=catch_up,
                   misfire_grace=5)
    register_schedules(app)
    clock.advance(300)
    made = app.backfill_schedule("pulse", START, clock.now(), by="ops")
    assert len(made) == 5
    clock.advance(120)  # they waited past the misfire grace
    ran = []
    for _ in range(10):
        result = app.store.job_claim(JobClaimParams("w1", clock.now(), 10, 10.0))
        assert not result.skipped_overlap and not result.policy_ended, result
        if not result.jobs:
            break
        (job,) = result.jobs  # one at a time: they share the schedule's key
        ran.append(job.slot)
        assert app.store.job_finish(JobFinish(job.id, job.fence, clock.now(), JobState.SUCCEEDED))
    assert ran == sorted(handle.job.slot for handle in made)
    assert set(ledger(app).values()) == {SlotOutcome.RAN}


def test_a_backfill_of_a_huge_range_is_refused_before_its_slots_are_listed(any_url, clock):
    """Centuries of a per-second schedule: refused at once, with --yes too (it used to list
    every slot first, and never finished)."""
    app = make_app(any_url, clock, every=1)
    register_schedules(app)
    ancient = datetime(1, 1, 1, tzinfo=UTC)
    with pytest.raises(oncely.ConfigError, match="more than 1000 slots; pass --yes"):
        app.backfill_schedule("pulse", ancient, START)
    with pytest.raises(oncely.ConfigError, match="more than 100,000 slots at once"):
        app.backfill_schedule("pulse", ancient, START, yes=True)
    assert slot_jobs(app) == []


def test_dynamic_schedules_and_delete(any_url, clock, tmp_path: Path):
    app = make_app(any_url, clock, every=60)
    register_schedules(app)
    row = app.create_schedule("org-42", "tick", every=30, args={"n": 42}, by="api")
    assert (row.origin, row.revision) == ("dynamic", 1)
    with pytest.raises(oncely.ConfigError, match="exists already"):
        app.create_schedule("pulse", "tick", every=5)
    with pytest.raises(oncely.ConfigError, match="declared by code"):
        app.update_schedule("pulse", every=5)
    with pytest.raises(oncely.UnknownTask):
        app.create_schedule("org-43", "nope", every=30)
    clock.advance(61)
    SlotEnqueuer(app).run_once()
    assert len(slot_jobs(app, "org-42")) == 1  # 10:00:30 was late, 10:01:00 covers it
    assert app.update_schedule("org-42", every=20).revision == 2
    # code that declares a dynamic schedule's name is refused, the dynamic one stays
    clash = make_app(any_url, clock, name="org-42", every=5)
    assert register_schedules(clash)["org-42"] == UpsertOutcome.REFUSED
    assert app.store.schedule_get("org-42").spec["every"] == 20.0
    app.delete_schedule("org-42", by="api")
    assert app.store.schedule_get("org-42") is None


def test_delete_refuses_while_a_live_worker_declares_it(any_url, clock):
    app = make_app(any_url, clock, every=60)
    from oncely.store.params import WorkerInfo

    app.store.worker_register(WorkerInfo("w1", "host", 1, None, 1, clock.now()))
    register_schedules(app, "w1")
    with pytest.raises(oncely.ConfigError, match="live worker"):
        app.delete_schedule("pulse")
    app.delete_schedule("pulse", force=True)
    assert app.store.schedule_get("pulse") is None
    register_schedules(app, "w1")
    other = make_app(any_url, clock, every=5)
    register_schedules(other)  # another definition in force; w1 still declares the old one
    [row] = [r for r in readmodel.schedules_overview(app.store, clock.now(), 30)]
    assert row["disagree"] == "w1" and row["revision"] == 2
    report = app.doctor()
    assert any("declare another definition" in f.summary for f in report.findings)
