"""The App's facade on every store: operator actions emit their events with who asked,
enqueue_many reports every job it creates, app.transaction() takes one parameter style on both
stores (the README's example runs as written), and run_now runs a singleton under a real lease or
refuses, leaving nothing queued."""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from tests.conftest import ROOT

import oncely
from oncely.store.params import JobClaimParams

START = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
WAITING = ("scheduled", "available", "retryable", "running")


class Recorder:
    def __init__(self, app: oncely.App) -> None:
        self.events: list[tuple[str, dict]] = []
        app.events.subscribe(lambda event: self.events.append((event.name, dict(event.fields))))

    def named(self, name: str) -> list[dict]:
        return [fields for event, fields in self.events if event == name]


@pytest.fixture
def app(any_url: str) -> Iterator[oncely.App]:
    app = oncely.App(any_url, clock=oncely.FrozenClock(START))

    @app.task(name="report", queue="reports")
    def report(ctx: oncely.JobContext, n: int = 0) -> dict:
        return {"n": n, "fence": ctx.fence}

    @app.task(name="flaky", retry=oncely.RetryPolicy(attempts=5), singleton=True)
    def flaky(ctx: oncely.JobContext) -> None:
        raise RuntimeError("upstream down")

    @app.task(name="send-invoice")
    def send_invoice(ctx: oncely.JobContext, org_id: int) -> None:
        pass

    @app.task(name="loose", singleton=False)
    def loose(ctx: oncely.JobContext) -> None:
        pass

    yield app
    app.close()


def unfinished(app: oncely.App) -> list[oncely.Job]:
    return [job for state in WAITING for job in app.read.jobs(state=state, limit=1000)]


# operator actions --------------------------------------------------------------------------
def test_retry_and_cancel_emit_their_events_with_who_asked(app: oncely.App) -> None:
    seen = Recorder(app)
    failed = app.run_now("flaky")
    assert (failed.state, failed.attempt, failed.max_attempts) == (oncely.JobState.FAILED, 1, 1)
    retried = app.retry_job(failed.id, by="ops@example.com")
    assert retried.state == oncely.JobState.AVAILABLE
    assert seen.named("job.retry_requested") == [
        {"job_id": failed.id, "task": "flaky", "by": "ops@example.com"}]
    cancelled = app.cancel_job(failed.id, "not today", by="cli")
    assert cancelled.state == oncely.JobState.CANCELLED
    assert seen.named("job.cancel_requested") == [
        {"job_id": failed.id, "task": "flaky", "running": False, "reason": "not today",
         "by": "cli"}]
    with pytest.raises(oncely.NotFound):
        app.retry_job(999_999)


def test_pause_and_resume_a_queue_emit_their_events(app: oncely.App) -> None:
    seen = Recorder(app)
    assert app.pause_queue("reports", "month-end freeze", by="cli").paused is True
    assert app.resume_queue("reports").paused is False
    assert seen.named("queue.paused") == [
        {"queue": "reports", "reason": "month-end freeze", "by": "cli"}]
    assert seen.named("queue.resumed") == [{"queue": "reports", "by": None}]
    with pytest.raises(oncely.ConfigError):
        app.pause_queue("no spaces allowed")


def test_retry_dead_letters_reports_what_it_brought_back(app: oncely.App) -> None:
    seen = Recorder(app)
    first, second = app.run_now("flaky"), app.run_now("flaky")
    retried, conflicts = app.retry_dead_letters(task="flaky", by="cli")
    assert (retried, conflicts) == (2, [])
    assert {job.id for job in unfinished(app)} == {first.id, second.id}
    assert seen.named("job.dead_letters_retried") == [
        {"queue": None, "task": "flaky", "retried": 2, "conflicts": 0, "by": "cli"}]


def test_enqueue_many_emits_one_event_per_job_it_created(app: oncely.App) -> None:
    seen = Recorder(app)
    app.enqueue_job("report", {"n": 0}, unique_key="k0")
    handles = app.enqueue_many("report", [{"n": 1}, {"n": 2}])
    again = app.enqueue_many("report", [{"n": 0}], unique_key="k0")  # deduplicated
    assert [h.created for h in handles] == [True, True] and again[0].created is False
    enqueued = [fields["job_id"] for fields in seen.named("job.enqueued")]
    assert enqueued == [again[0].id, *(h.id for h in handles)]


def test_enqueue_many_builds_each_job_as_enqueue_job_does(app: oncely.App) -> None:
    @app.task(name="keyed", singleton="org:{org}", concurrency_key="region:{region}")
    def keyed(ctx: oncely.JobContext, org: object = None, region: str = "eu",
              **rest: object) -> None:
        return None

    class Level(enum.IntEnum):
        HIGH = 2

    batch = [{"org": 1}, {"org": "é", "region": "us", "tags": ("a", "b"), "level": Level.HIGH},
             {"org": 3, "nested": {"k": [1.5, None, True]}, "big": 2**70, "x": -0.0}]
    handles = app.enqueue_many("keyed", batch, priority=4)
    singles = [app.enqueue_job("keyed", args, priority=4) for args in batch]
    fields = ("args", "singleton_key", "concurrency_key", "queue", "priority", "max_attempts",
              "state", "run_at")
    for many, single in zip(handles, singles, strict=True):
        stored, expected = app.get_job(many.id), app.get_job(single.id)
        assert stored is not None and expected is not None
        assert [getattr(stored, f) for f in fields] == [getattr(expected, f) for f in fields]
        assert many.job.args == stored.args  # the handle holds the args as stored
    assert handles[1].job.args["tags"] == ["a", "b"] and handles[1].job.args["level"] == 2
    assert app.get_job(handles[2].id).args["big"] == 2**70  # type: ignore[union-attr]
    before = len(app.read.jobs(limit=100))
    # A later job's bad args or missing key argument fail the whole call, naming the task.
    with pytest.raises(oncely.ArgsNotJSON, match="'keyed'"):
        app.enqueue_many("keyed", [{"org": 1}, {"org": 2, "when": object()}])
    with pytest.raises(oncely.ConfigError, match=re.escape("'org:{org}' names argument")):
        app.enqueue_many("keyed", [{"org": 1}, {"region": "us"}])
    with pytest.raises(oncely.ArgsNotJSON, match="NUL"):
        app.enqueue_many("keyed", [{"org": 1}, {"org": "a\x00b"}])
    assert len(app.read.jobs(limit=100)) == before


def test_enqueue_many_events_only_to_who_takes_them(app: oncely.App) -> None:
    others: list[str] = []
    app.events.subscribe(lambda event: others.append(event.name), names=["job.cancelled"])
    handles = app.enqueue_many("report", [{"n": n} for n in range(3)])
    assert others == [] and [h.created for h in handles] == [True] * 3
    seen = Recorder(app)
    handles = app.enqueue_many("report", [{"n": n} for n in range(3)])
    assert [f["job_id"] for f in seen.named("job.enqueued")] == [h.id for h in handles]
    assert {f["task"] for f in seen.named("job.enqueued")} == {"report"}


# transactions ------------------------------------------------------------------------------
def test_one_parameter_style_on_both_stores(app: oncely.App) -> None:
    with app.transaction() as tx:
        assert tx.paramstyle == "pyformat" and tx.dialect == app.dialect
        assert tx.native_paramstyle == ("qmark" if app.dialect == "sqlite" else "pyformat")
        tx.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        tx.execute("INSERT INTO notes (id, body) VALUES (%s, %s)", (1, "100% done"))
        tx.execute("INSERT INTO notes (id, body) VALUES (%(id)s, %(body)s)",
                   {"id": 2, "body": "50%"})
    with app.transaction() as tx:
        rows = tx.execute("SELECT id, body FROM notes WHERE body LIKE '%%done' AND id >= %s",
                          (1,)).fetchall()
        assert [tuple(row) for row in rows] == [(1, "100% done")]
        with pytest.raises(oncely.ConfigError):
            tx.execute("SELECT %d", (1,))


def test_a_rolled_back_transaction_takes_its_job_with_it(app: oncely.App) -> None:
    with app.transaction() as tx:
        tx.execute("CREATE TABLE invoices (org_id INTEGER, total INTEGER)")
    with pytest.raises(RuntimeError), app.transaction() as tx:
        tx.execute("INSERT INTO invoices (org_id, total) VALUES (%s, %s)", (7, 10))
        app.enqueue_job("send-invoice", {"org_id": 7}, connection=tx)
        raise RuntimeError("payment declined")
    with app.transaction() as tx:
        assert tx.execute("SELECT COUNT(*) FROM invoices").fetchone()[0] == 0
    assert app.read.jobs(task="send-invoice") == []


def test_the_readme_transactional_enqueue_runs_as_written(app: oncely.App) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Transactional enqueue", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    with app.transaction() as tx:
        tx.execute("CREATE TABLE invoices (org_id INTEGER, total INTEGER)")
    exec(compile(code, "README.md", "exec"), {"app": app})
    with app.transaction() as tx:
        assert tuple(tx.execute("SELECT org_id, total FROM invoices").fetchone()) == (42, 1200)
    [job] = app.read.jobs(task="send-invoice")
    assert job.args == {"org_id": 42}


# run_now -----------------------------------------------------------------------------------
def test_run_now_runs_under_a_lease_and_leaves_the_finished_job(app: oncely.App) -> None:
    seen = Recorder(app)
    job = app.run_now("report", n=3)
    assert job.state == oncely.JobState.SUCCEEDED and job.result["n"] == 3
    assert job.result["fence"] >= 1  # the singleton lease's fence
    assert unfinished(app) == []
    [execution] = app.read.executions(task="report")
    assert execution.job_id == job.id and execution.outcome == "succeeded"
    assert [name for name, _ in seen.events if name.startswith("job.")] == [
        "job.enqueued", "job.claimed", "job.started", "job.succeeded"]


def test_run_now_is_refused_while_the_singleton_runs_and_leaves_nothing(app: oncely.App) -> None:
    seen = Recorder(app)
    holder = app.enqueue("flaky")
    [running] = app.store.job_claim(
        JobClaimParams("other-worker", START, 1, 30.0, ("default",))).jobs
    assert running.id == holder.id
    with pytest.raises(oncely.SingletonBusy, match="other-worker"):
        app.run_now("flaky", by="cli")
    assert [job.id for job in unfinished(app)] == [holder.id]
    assert [job.id for job in app.read.jobs(task="flaky")] == [holder.id]  # nothing else
    [refused] = seen.named("job.run_now_refused")
    assert refused["task"] == "flaky" and refused["by"] == "cli"
    assert isinstance(oncely.SingletonBusy("x"), oncely.OncelyError)


def test_run_now_held_back_by_a_rate_limit_is_refused_and_leaves_nothing(
        app: oncely.App) -> None:
    @app.task(name="hourly-export", singleton=True, limit=(1, 3600))
    def export(ctx: oncely.JobContext) -> str:
        return "exported"

    assert app.run_now("hourly-export").state == oncely.JobState.SUCCEEDED
    with pytest.raises(oncely.SingletonBusy, match="holds the task back"):
        app.run_now("hourly-export")  # one start per hour: the control holds it
    assert unfinished(app) == []
    assert [job.state for job in app.read.jobs(task="hourly-export")] == [
        oncely.JobState.SUCCEEDED]


def test_run_now_fails_once_and_is_never_retried_later(app: oncely.App) -> None:
    job = app.run_now("flaky")  # its policy allows 5 attempts; run_now makes one
    assert job.state == oncely.JobState.FAILED
    assert "upstream down" in job.errors[-1].message
    assert unfinished(app) == []


def test_run_now_needs_a_singleton_task(app: oncely.App) -> None:
    with pytest.raises(oncely.ConfigError, match="not a singleton"):
        app.run_now("loose")
    assert app.read.jobs(task="loose") == []


def test_run_now_renews_its_lease_and_holds_the_timeout(tmp_path) -> None:
    app = oncely.App(f"sqlite:///{tmp_path / 'live.db'}", clock=oncely.SystemClock(),
                     settings=oncely.Settings(lease_ttl=2.0))
    done = threading.Event()

    @app.task(name="long", singleton=True)
    def long(ctx: oncely.JobContext) -> str:
        # Three lease TTLs: only renewals keep the lease (else the keeper self-fences).
        ctx.cancel_event.wait(6.0)
        ctx.raise_if_cancelled()
        return "kept"

    @app.task(name="stuck", singleton=True, timeout=1.0)
    def stuck(ctx: oncely.JobContext) -> None:
        ctx.cancel_event.wait(30.0)
        done.set()
        ctx.raise_if_cancelled()

    try:
        kept = app.run_now("long")
        assert (kept.state, kept.result) == (oncely.JobState.SUCCEEDED, "kept")
        timed_out = app.run_now("stuck")
        assert timed_out.state == oncely.JobState.FAILED and done.is_set()
        assert timed_out.errors[-1].kind.value == "timeout"
    finally:
        app.close()
