"""Schedules, slots, leases, fences, leadership and rescue through the engine's own services,
driven step by step with a frozen clock, on every store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import oncely
from oncely.maintenance.enqueuer import SlotEnqueuer, register_schedules
from oncely.maintenance.leader import LeaderElector
from oncely.maintenance.rescuer import Rescuer
from oncely.store.params import JobClaimParams, JobFilter, JobFinish, LeaseRenewal, UpsertOutcome
from oncely.testing import run_job
from oncely.types import ErrorKind, JobState, SlotOutcome

START = datetime(2026, 11, 30, 10, 0, 0, 500_000, tzinfo=UTC)


def make_app(url, clock, **schedule):
    app = oncely.App(url, clock=clock, settings=oncely.Settings(lease_ttl=10, leader_ttl=6))

    @app.task(name="tick")
    def tick(ctx):
        return ctx.slot.isoformat()

    if schedule is not None:
        app.schedule("every-second", "tick", **(schedule or {"every": 1}))
    return app


@pytest.fixture
def clock():
    return oncely.FrozenClock(START)


def ledger(app, name="every-second"):
    return {r.slot: r.outcome for r in app.store.ledger_list(name, limit=10_000)}


def claim(app, worker="w1", limit=10, ttl=10.0):
    return app.store.job_claim(JobClaimParams(worker, app.clock.now(), limit, ttl))


def test_registration_is_an_idempotent_upsert_that_enqueues_nothing(any_url, clock):
    apps = [make_app(any_url, clock) for _ in range(10)]
    outcomes = [app.register_schedules()["every-second"] for app in apps]
    assert outcomes == [UpsertOutcome.CREATED] + [UpsertOutcome.UNCHANGED] * 9
    assert [row.name for row in apps[0].store.schedule_list()] == ["every-second"]
    assert apps[0].store.job_list(JobFilter()) == []
    changed = make_app(any_url, clock, every=2)
    assert register_schedules(changed)["every-second"] == UpsertOutcome.UPDATED
    seen = []
    other = oncely.App(any_url, clock=clock)
    other.events.subscribe(seen.append)
    register_schedules(other)
    assert [(e.name, e.fields["schedule"]) for e in seen] == [
        ("schedule.undeclared", "every-second")]


def test_each_slot_becomes_one_job_whoever_enqueues_it(any_url, clock):
    apps = [make_app(any_url, clock) for _ in range(3)]
    register_schedules(apps[0])
    for _ in range(5):
        clock.advance(1)
        for app in apps:  # three enqueuers race for every slot
            SlotEnqueuer(app.runtime).run_once()
    jobs = apps[0].store.job_list(JobFilter(limit=100))
    slots = sorted(job.slot for job in jobs)
    assert len(slots) == len(set(slots)) == 5
    assert set(ledger(apps[0]).values()) == {SlotOutcome.ENQUEUED}


def test_ledger_follows_each_slot_to_its_outcome(any_url, clock):
    app = make_app(any_url, clock)
    app.register_schedules()
    clock.advance(1)
    SlotEnqueuer(app.runtime).run_once()
    (first,) = claim(app).jobs
    clock.advance(1)
    SlotEnqueuer(app.runtime).run_once()
    result = claim(app)
    # Singleton: the next slot cannot run beside the first, and overlap="skip" drops it.
    assert result.jobs == [] and len(result.skipped_overlap) == 1
    assert app.store.job_finish(JobFinish(first.id, first.fence, clock.now(), JobState.SUCCEEDED))
    outcomes = ledger(app)
    assert outcomes[first.slot] == SlotOutcome.RAN
    assert outcomes[result.skipped_overlap[0].slot] == SlotOutcome.SKIPPED_OVERLAP


def test_catch_up_latest_runs_one_and_coalesces_the_rest(any_url, clock):
    app = make_app(any_url, clock, cron="*/10 * * * *", catch_up="latest")
    app.register_schedules()
    clock.advance(timedelta(hours=1))  # the fleet was down for an hour
    SlotEnqueuer(app.runtime).run_once()
    outcomes = ledger(app)
    assert sorted(outcomes.values()).count(SlotOutcome.ENQUEUED) == 1
    assert sorted(outcomes.values()).count(SlotOutcome.COALESCED) == 5
    assert max(outcomes) == max(s for s, o in outcomes.items() if o == SlotOutcome.ENQUEUED)


def test_catch_up_none_records_missed_slots(any_url, clock):
    app = make_app(any_url, clock, cron="*/10 * * * *", catch_up="none")
    app.register_schedules()
    clock.advance(timedelta(minutes=35))
    SlotEnqueuer(app.runtime).run_once()
    assert sorted(ledger(app).values()) == [SlotOutcome.MISSED] * 3
    assert app.store.job_list(JobFilter()) == []


def test_catch_up_all_is_capped(any_url, clock):
    app = make_app(any_url, clock, cron="* * * * *", catch_up="all", catch_up_limit=5)
    app.register_schedules()
    clock.advance(timedelta(minutes=20))
    SlotEnqueuer(app.runtime).run_once()
    values = sorted(ledger(app).values())
    # 10:20 is on time; of the 19 missed before it the newest 5 run, the older 14 coalesce.
    assert values.count(SlotOutcome.ENQUEUED) == 6
    assert values.count(SlotOutcome.COALESCED) == 14


def test_rescuer_retries_a_job_whose_worker_died_and_fences_the_zombie(any_url, clock):
    app = make_app(any_url, clock, every=60)

    @app.task(name="work", retry=oncely.RetryPolicy(attempts=3, backoff="fixed", base_delay=5))
    def work(ctx):
        return None

    handle = work.enqueue()
    (zombie,) = claim(app, "dead-worker").jobs
    clock.advance(11)  # past the 10 s lease: the worker is presumed dead
    result = Rescuer(app.runtime).run_once()
    assert result.retried == [handle.id]
    job = handle.refresh()
    assert job.state == JobState.RETRYABLE and job.errors[-1].kind == ErrorKind.LEASE_EXPIRED
    assert "dead-worker" in job.errors[-1].message
    # The zombie wakes up and tries to finish: refused, nothing changes.
    assert not app.store.job_finish(
        JobFinish(zombie.id, zombie.fence, clock.now(), JobState.SUCCEEDED))
    clock.advance(5)
    (again,) = claim(app, "w2").jobs
    # The lost attempt was given back: this is the job's first attempt still.
    assert again.id == handle.id and again.fence > zombie.fence and again.attempt == 1
    assert job.errors[-1].message.startswith("rescued (1 of 3)")


def test_rescues_give_the_attempt_back_until_the_rescue_budget_is_spent(any_url, clock):
    """A slot job whose worker dies on every run is rescued and re-run max_rescues times,
    without using its retry budget (one attempt), then failed with every rescue in its history;
    its ledger row says so all along."""
    app = make_app(any_url, clock)
    app.settings = app.settings.with_(max_rescues=2)
    app.register_schedules()
    clock.advance(1)
    SlotEnqueuer(app.runtime).run_once()
    for number in (1, 2):
        (job,) = claim(app, f"dead-{number}").jobs
        assert job.attempt == 1
        clock.advance(11)
        assert Rescuer(app.runtime).run_once().retried == [job.id]
        (record,) = app.store.ledger_list("every-second")
        assert record.outcome == SlotOutcome.ENQUEUED
        assert record.note is not None and record.note.startswith(f"rescued ({number} of 2)")
    (job,) = claim(app, "dead-3").jobs
    clock.advance(11)
    assert Rescuer(app.runtime).run_once().failed == [job.id]
    final = app.store.job_get(job.id)
    assert final is not None and final.state == JobState.FAILED and final.attempt == 1
    assert [e.kind for e in final.errors] == [ErrorKind.LEASE_EXPIRED] * 3
    assert all(e.message.startswith("rescued") for e in final.errors)
    (record,) = app.store.ledger_list("every-second")
    assert record.outcome == SlotOutcome.FAILED
    assert record.note is not None and record.note.startswith("rescued 2 times already")


def test_a_rescued_slot_that_runs_keeps_the_rescue_on_its_ledger_row(any_url, clock):
    app = make_app(any_url, clock)
    app.register_schedules()
    clock.advance(1)
    SlotEnqueuer(app.runtime).run_once()
    claim(app, "dead")
    clock.advance(11)
    Rescuer(app.runtime).run_once()
    (again,) = claim(app, "w2").jobs
    assert app.store.job_finish(JobFinish(again.id, again.fence, clock.now(), JobState.SUCCEEDED))
    (record,) = app.store.ledger_list("every-second")
    assert record.outcome == SlotOutcome.RAN
    assert record.note is not None and record.note.startswith("rescued (1 of 3)")


def test_a_zombie_cannot_write_through_its_fence_after_a_takeover(any_url, clock):
    app = make_app(any_url, clock, every=1)
    app.register_schedules()
    clock.advance(1)
    SlotEnqueuer(app.runtime).run_once()
    (first,) = claim(app, "paused").jobs
    clock.advance(11)  # its lease expired while the worker was paused
    SlotEnqueuer(app.runtime).run_once()
    taken = claim(app, "successor").jobs
    assert taken and taken[0].fence > first.fence
    with (
        pytest.raises(oncely.FenceRejected),
        app.store.fenced_transaction(first.id, first.fence, clock.now()),
    ):
        pass
    with app.store.fenced_transaction(taken[0].id, taken[0].fence, clock.now()):
        pass
    assert not app.store.job_fence_current(first.id, first.fence, clock.now())


def test_leadership_moves_on_expiry_and_on_resignation(any_url, clock):
    app = make_app(any_url, clock)
    one, two = LeaderElector(app.runtime, "one"), LeaderElector(app.runtime, "two")
    assert one.run_once().is_leader and not two.run_once().is_leader
    term = one.term
    clock.advance(7)  # one stopped renewing: its 6 s lease expired
    assert two.run_once().is_leader and two.term > term
    assert not one.run_once().is_leader
    two.resign()
    assert one.run_once().is_leader


def test_run_job_gives_the_handler_a_real_fenced_context(any_url, clock):
    app = make_app(any_url, clock)

    @app.task(name="save")
    def save(ctx):
        with ctx.fenced():
            pass
        ctx.checkpoint({"done": 3})
        return ctx.last_checkpoint

    result = run_job(save)
    assert result.state == JobState.SUCCEEDED and result.result == {"done": 3}
    assert result.job.checkpoint == {"done": 3}


def test_trigger_runs_the_current_slot_once_for_the_whole_fleet(any_url, clock):
    apps = [make_app(any_url, clock, cron="35 * * * *") for _ in range(6)]
    register_schedules(apps[0])
    clock.set("2026-11-30T11:50:00+00:00")  # six workers start mid-hour and each "runs it now"
    handles = [app.trigger("every-second") for app in apps]
    assert sum(handle is not None for handle in handles) == 1
    (job,) = apps[0].store.job_list(JobFilter())
    assert job.slot == datetime(2026, 11, 30, 11, 35, tzinfo=UTC)
    SlotEnqueuer(apps[0]).run_once()  # the enqueuer does not add that slot again
    assert len(apps[0].store.job_list(JobFilter())) == 1
    with pytest.raises(oncely.NotFound, match="schedule 'nope' does not exist"):
        apps[0].trigger("nope")


def test_a_slot_waits_for_a_holder_that_missed_its_renewals_and_skips_for_a_live_one(any_url,
                                                                                      clock):
    """A claim skips a slot (overlap=skip) only for a holder that renews on time. A holder whose
    lease runs out within a third of the TTL has missed a renewal: the slot waits for the lease
    to expire, then runs, and the old holder is rescued."""
    app = make_app(any_url, clock, every=9)  # lease TTL 10 s
    app.register_schedules()
    clock.advance(9)
    SlotEnqueuer(app.runtime).run_once()
    (frozen,) = claim(app, "frozen").jobs  # its lease runs out 10 s from now, never renewed
    clock.advance(9)  # the next slot: 1 s of the holder's lease left
    SlotEnqueuer(app.runtime).run_once()
    result = claim(app, "w2")
    assert result.jobs == [] and result.skipped_overlap == []  # it waits, not skipped
    clock.advance(1.5)  # the holder's lease ran out
    (second,) = claim(app, "w2").jobs
    assert second.slot is not None and second.slot > frozen.slot  # type: ignore[operator]
    assert Rescuer(app.runtime).run_once().retried == [frozen.id]
    # The rescued first run of the old slot meets a live holder: skipped, by the overlap policy.
    assert [job.id for job in claim(app, "w3").skipped_overlap] == [frozen.id]
    assert ledger(app)[frozen.slot] == SlotOutcome.SKIPPED_OVERLAP


def test_a_slot_is_skipped_for_a_holder_that_renews(any_url, clock):
    app = make_app(any_url, clock, every=9)
    app.register_schedules()
    clock.advance(9)
    SlotEnqueuer(app.runtime).run_once()
    (holder,) = claim(app, "alive").jobs
    clock.advance(6)
    renewed = app.store.lease_renew("alive", clock.now(), 10.0,
                                    [LeaseRenewal(holder.id, holder.fence)])
    assert renewed[holder.id].renewed
    clock.advance(3)  # the next slot: 7 s of the holder's lease left
    SlotEnqueuer(app.runtime).run_once()
    result = claim(app, "w2")
    assert result.jobs == [] and len(result.skipped_overlap) == 1
