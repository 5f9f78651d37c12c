"""The worker keeps its promise through bad handlers and bad results, in real worker processes,
on every store: a singleton key never has two executions at once (also when a handler ignores
its timeout), the handler thread survives anything a handler raises, and one job's unstorable
outcome never touches another job."""

from __future__ import annotations

import collections

import pytest
from tests.conftest import read_effects, state_counts

import oncely
from oncely.store.base import LEADER_LEASE_KEY
from oncely.store.params import JobFilter
from oncely.testing import wait_until
from oncely.types import ErrorKind, JobState

FAST = {"ONCELY_POLL_INTERVAL": "0.05", "ONCELY_SHUTDOWN_GRACE": "1"}


def open_unruly_app(url: str) -> oncely.App:
    from tests.apps import unruly

    app = oncely.App(url)
    app.tasks = dict(unruly.app.tasks)
    return app


def finished(app: oncely.App, count: int) -> bool:
    counts = state_counts(app)
    return sum(counts[state] for state in ("succeeded", "failed", "cancelled")) == count


# In a thread the first attempt overruns its 1-s timeout by 5 s, over the 3-s lease TTL:
# its worker must keep renewing the lease all that time (the leader's rescuer looks twice a
# second). Its retry overruns too, past the 1-s grace it gets to stop.
# (3 s rather than less: on a busy 2-core machine a CPU-bound handler can hold back the keeper's
# renewals by a second or more, and the attempt would be rescued instead of timing out.)
THREAD_OVERRUN = {**FAST, "ONCELY_LEASE_TTL": "3", "ONCELY_MAINTENANCE_INTERVAL": "0.5",
                  "ONCELY_LEADER_TTL": "2"}


@pytest.mark.parametrize("task, isolation, args, env", [
    ("hog", "thread", {"seconds": 6.0, "retry_seconds": 2.5}, THREAD_OVERRUN),
    ("hog_process", "process", {"seconds": 6.0}, FAST),
])
def test_a_singleton_handler_that_ignores_its_timeout_never_runs_beside_its_retry(
    any_url, effects_sqlite, workers, task, isolation, args, env
):
    """A CPU-bound singleton handler ignores its timeout (1 s; 2 s in a process) and, in a
    process, SIGTERM, and would run 6 s. Two workers are ready to take its retry.
    The retry must not start until the first attempt's code has really stopped: in a thread,
    when it returns (the worker keeps the job's lease, renewed past its TTL, until then); in a
    child process, when the worker has killed it. Nothing is rescued or taken over meanwhile."""
    app = open_unruly_app(any_url)
    app.migrate()
    handle = app.enqueue_job(task, args)
    for _ in range(2):
        workers.start(any_url, effects_sqlite, "--concurrency", "2",
                      app="tests.apps.unruly:app", env=env)
    job = wait_until(lambda: (j := app.store.job_get(handle.id)) and j.state.finished and j,
                     timeout=90, interval=0.1, message="both attempts ended")
    assert workers.stop_all() == [0, 0]

    assert job.state == JobState.FAILED and job.attempt == 2
    assert [error.kind for error in job.errors] == [ErrorKind.TIMEOUT, ErrorKind.TIMEOUT]
    assert rescues(app, job.id) == 0
    assert app.store.event_list("lease.taken_over") == []
    effects = read_effects(effects_sqlite)
    starts = {key: started for kind, key, _, _, _, started, _ in effects if kind == "start"}
    assert sorted(starts) == ["1", "2"], (
        f"each attempt ran once: {job.errors}\n{workers.log(0)}\n{workers.log(1)}")
    # Every trace of attempt 1 (its ticks, its end) precedes the start of attempt 2.
    last_of_first = max(ended for kind, key, *_, ended in effects if key == "1")
    assert last_of_first < starts["2"], "attempt 2 started while attempt 1 still ran"
    ends = {key: ended for kind, key, *_, ended in effects if kind == "end"}
    if isolation == "thread":
        assert sorted(ends) == ["1", "2"], "a thread cannot be stopped: both ran to their end"
        assert ends["1"] - starts["1"] >= 6.0  # the overrun outlived the lease TTL twice
        assert all("ignored the request to stop" in error.message for error in job.errors)
    else:
        assert ends == {}, "the child processes were killed before their end"
        assert all("killed by SIGKILL" in error.message for error in job.errors)


def rescues(app: oncely.App, job_id: int) -> int:
    """How many times the rescuer took the job from a worker (not part of the Job view)."""
    with app.transaction() as tx:
        return int(tx.execute("SELECT rescues FROM oncely_jobs WHERE id = %s",
                              (job_id,)).fetchone()[0])


def test_handlers_that_exit_or_raise_the_unprintable_leave_the_handler_thread_alive(
    any_url, effects_sqlite, workers
):
    """With one handler thread, jobs that call sys.exit(), raise an exception whose str()
    raises, KeyboardInterrupt or GeneratorExit each end failed with a readable error, and the
    ordinary jobs behind them all run, once each."""
    app = open_unruly_app(any_url)
    app.migrate()
    kinds = ["exit", "unprintable", "interrupt", "generator_exit"]
    bad = {kind: app.enqueue_job("raises", {"kind": kind}) for kind in kinds}
    app.enqueue_many("returns", [{"n": n} for n in range(20)])
    workers.start(any_url, effects_sqlite, "--concurrency", "1", app="tests.apps.unruly:app",
                  env=FAST)
    wait_until(lambda: finished(app, 24), timeout=60, interval=0.1,
               message="every job finished on the one handler thread")
    assert workers.stop_all() == [0]

    messages = {kind: handle.refresh().errors[-1].message for kind, handle in bad.items()}
    assert messages == {"exit": "SystemExit: 3",
                        "unprintable": "Unprintable (its message could not be read)",
                        "interrupt": "KeyboardInterrupt", "generator_exit": "GeneratorExit"}
    assert state_counts(app)[JobState.FAILED] == 4
    runs = collections.Counter(key for _, key, *_ in read_effects(effects_sqlite, "returns"))
    assert runs == {str(n): 1 for n in range(20)}


def test_an_unstorable_outcome_fails_its_own_job_and_touches_no_other(
    any_url, effects_sqlite, workers
):
    """Results no store can hold (an int of 5,000 digits, a NUL, a lone surrogate, nested or
    not) and an error message with a NUL and a lone surrogate, among 400 plain jobs in the same
    completion batches: the bad results fail their own jobs with the reason, the bad error is
    recorded cleaned, and every job ran exactly once."""
    from tests.apps.unruly import UNSTORABLE

    app = open_unruly_app(any_url)
    app.migrate()
    bad_kinds = [*UNSTORABLE, "bad_error"]
    jobs = [{"n": n, "kind": bad_kinds[(n // 40) % len(bad_kinds)] if n % 40 == 7 else "plain"}
            for n in range(400)]
    app.enqueue_many("returns", jobs)
    workers.start(any_url, effects_sqlite, "--concurrency", "8", app="tests.apps.unruly:app",
                  env=FAST)
    wait_until(lambda: finished(app, 400), timeout=120, interval=0.2, message="400 finished")
    assert workers.stop_all() == [0]

    runs = collections.Counter(key for _, key, *_ in read_effects(effects_sqlite, "returns"))
    assert runs == {str(n): 1 for n in range(400)}, "a job ran twice (or never)"
    failed = {job.args["n"]: job for job in app.store.job_list(
        JobFilter(state=JobState.FAILED, limit=1000))}
    assert sorted(failed) == [n for n, args in enumerate(jobs) if args["kind"] != "plain"]
    for n, job in failed.items():
        message = job.errors[-1].message
        if jobs[n]["kind"] == "bad_error":
            assert message == "ValueError: cannot store \\udc80 or \\x00 as they are"
        else:
            assert message.startswith("result not storable: "), message
    succeeded = app.store.job_list(JobFilter(state=JobState.SUCCEEDED, limit=1000))
    assert len(succeeded) == 400 - len(failed)
    assert all(job.result == job.args["n"] and job.attempt == 1 for job in succeeded)


def test_a_task_named_leader_runs_beside_the_leader(any_url, effects_sqlite, workers):
    """The leader's lease row lives where no task name reaches: a singleton task called
    ``leader`` runs while a worker holds the leadership."""
    app = open_unruly_app(any_url)
    app.migrate()
    workers.start(any_url, effects_sqlite, "--concurrency", "2", app="tests.apps.unruly:app",
                  env={**FAST, "ONCELY_LEADER_TTL": "2", "ONCELY_MAINTENANCE_INTERVAL": "0.2"})
    wait_until(lambda: any(lease.key == LEADER_LEASE_KEY and lease.owner
                           for lease in app.store.lease_list()),
               timeout=30, interval=0.1, message="a worker became leader")
    handles = [app.enqueue_job("leader", {"n": n}) for n in range(3)]
    wait_until(lambda: all(h.refresh().state == JobState.SUCCEEDED for h in handles),
               timeout=30, interval=0.1, message="the jobs of task 'leader' ran")
    assert workers.stop_all() == [0]
    assert sorted(key for _, key, *_ in read_effects(effects_sqlite, "leader")) == ["0", "1", "2"]
