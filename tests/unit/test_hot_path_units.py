"""Pieces of the worker's hot path that take shortcuts: decoding a claimed row without the frozen
dataclass's ``__init__``, and an event bus that builds no event nobody wants."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from oncely.observe.events import Event, EventBus, logs_event
from oncely.store.rows import JOB_COLUMNS, job_from_row, jobs_from_rows, jobs_from_tuples
from oncely.types import ErrorKind, Job, JobError, JobState, Overlap

AT = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
ERRORS = '[{"attempt":1,"at":"2026-03-01T12:00:00+00:00","kind":"error","message":"boom"}]'


def a_row() -> dict[str, object]:
    return {
        "id": 7, "queue": "q", "task": "t", "args": '{"a":1}', "state": "running",
        "priority": 2, "attempt": 1, "max_attempts": 3, "run_at": AT.timestamp(),
        "created_at": AT.timestamp() - 1, "unique_key": "u", "schedule": "s",
        "slot": AT.timestamp(), "singleton_key": "k", "overlap": "buffer_one", "timeout": 5,
        "lease_owner": "w", "lease_expires_at": AT.timestamp() + 30, "fence": 4,
        "cancel_requested": 0, "started_at": AT.timestamp(), "finished_at": None,
        "result": None, "errors": ERRORS, "checkpoint": '{"n":2}', "concurrency_key": None,
    }


def expected() -> Job:
    return Job(
        id=7, queue="q", task="t", args={"a": 1}, state=JobState.RUNNING, priority=2,
        attempt=1, max_attempts=3, run_at=AT, created_at=datetime.fromtimestamp(
            AT.timestamp() - 1, UTC), unique_key="u", schedule="s", slot=AT,
        singleton_key="k", overlap=Overlap.BUFFER_ONE, timeout=5.0, lease_owner="w",
        lease_expires_at=datetime.fromtimestamp(AT.timestamp() + 30, UTC), fence=4,
        cancel_requested=False, started_at=AT, finished_at=None, result=None,
        errors=(JobError(1, datetime(2026, 3, 1, 12, tzinfo=UTC), ErrorKind.ERROR, "boom"),),
        checkpoint={"n": 2}, concurrency_key=None,
    )


def test_the_jobs_columns_are_the_fields_of_a_job_in_order() -> None:
    assert tuple(field.name for field in dataclasses.fields(Job)) == JOB_COLUMNS


def test_a_sqlite_row_in_any_column_order_decodes_to_the_job_the_constructor_builds() -> None:
    row = a_row()
    names = [*reversed(row), "extra"]  # another order, and a column that is not a field
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    select = ", ".join(f":{name} AS {name}" for name in names)
    fetched = conn.execute(f"SELECT {select}", {**row, "extra": 1}).fetchone()
    for _ in range(2):  # the second row reuses the positions found for the first
        job = job_from_row(fetched, json_text=True)
        assert job == expected()
        assert vars(job) == vars(expected()) and repr(job) == repr(expected())
        assert hash(job.run_at) == hash(AT)
        with pytest.raises(dataclasses.FrozenInstanceError):
            job.id = 8  # type: ignore[misc]


def test_rows_of_one_statement_decode_together_as_each_alone() -> None:
    """A batch converts each distinct instant once; every job still gets the value of its own
    row, NULLs stay None, and the jobs are equal to the ones decoded row by row."""
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    first, second = a_row(), {**a_row(), "id": 8, "slot": None, "finished_at": AT.timestamp() + 9,
                              "lease_expires_at": AT.timestamp() + 31}
    select = ", ".join(f":{name} AS {name}" for name in first)
    rows = [conn.execute(f"SELECT {select}", row).fetchone() for row in (first, second)]
    jobs = jobs_from_rows(rows, json_text=True)
    assert jobs == [job_from_row(row, json_text=True) for row in rows]
    assert jobs[0] == expected()
    assert (jobs[1].id, jobs[1].slot, jobs[1].started_at) == (8, None, AT)
    assert jobs[1].finished_at == datetime.fromtimestamp(AT.timestamp() + 9, UTC)
    assert jobs[1].lease_expires_at == datetime.fromtimestamp(AT.timestamp() + 31, UTC)
    assert jobs_from_rows([], json_text=True) == []


def test_a_dict_row_with_datetimes_and_decoded_json_decodes_alike() -> None:
    row = a_row()
    for name in ("run_at", "slot", "started_at"):
        row[name] = AT.astimezone(ZoneInfo("Europe/Paris"))
    row["created_at"] = datetime.fromtimestamp(AT.timestamp() - 1, UTC).replace(tzinfo=None)
    row["lease_expires_at"] = datetime.fromtimestamp(AT.timestamp() + 30, UTC)
    row["args"], row["checkpoint"] = {"a": 1}, {"n": 2}
    row["errors"] = [{"attempt": 1, "at": "2026-03-01T12:00:00+00:00", "kind": "error",
                      "message": "boom"}]
    job = job_from_row(row, json_text=False)
    assert job == expected() and job.run_at.tzinfo is UTC


def test_tuple_rows_named_by_their_columns_decode_as_dict_rows() -> None:
    """PostgreSQL's claim reads plain tuples: any column order, extra columns, shared instants;
    the jobs equal the ones its dict rows decode to."""
    first, second = a_row(), {**a_row(), "id": 8, "slot": None,
                              "lease_expires_at": AT.timestamp() + 31}
    names = ["claim_blocked", *reversed(first)]
    rows = [tuple(False if name == "claim_blocked" else row[name] for name in names)
            for row in (first, second)]
    for _ in range(2):  # the second call reuses the positions found for these names
        jobs = jobs_from_tuples(names, rows, json_text=True)
        assert jobs == [job_from_row(row, json_text=True) for row in (first, second)]
    assert jobs[0] == expected() and jobs[1].slot is None
    assert jobs_from_tuples(names, [], json_text=True) == []


def test_a_null_required_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="NULL"):
        job_from_row({**a_row(), "run_at": None}, json_text=True)


def test_events_reach_only_the_subscribers_that_want_them() -> None:
    ticks: list[int] = []

    def now() -> datetime:
        ticks.append(1)
        return AT

    bus = EventBus(now)
    everything: list[Event] = []
    some: list[Event] = []
    assert not bus.wants("job.started")
    bus.emit("job.started", job_id=1)
    assert ticks == []  # nobody wants it: no event was built, no clock read
    stop_some = bus.subscribe(some.append, names={"fence.rejected"})
    assert bus.wants("fence.rejected") and not bus.wants("job.started")
    bus.emit("job.started", job_id=1)
    bus.emit("fence.rejected", job_id=2)
    assert ticks == [1] and [e.name for e in some] == ["fence.rejected"]
    stop_all = bus.subscribe(everything.append)
    assert bus.wants("job.started")
    bus.emit("job.started", job_id=3)
    bus.emit("fence.rejected", job_id=4)
    assert [e.fields["job_id"] for e in everything] == [3, 4]
    assert [e.fields["job_id"] for e in some] == [2, 4]
    stop_some()
    bus.emit("fence.rejected", job_id=5)
    assert [e.fields["job_id"] for e in some] == [2, 4]
    assert [e.fields["job_id"] for e in everything] == [3, 4, 5]
    stop_all()
    assert not bus.wants("fence.rejected")


def test_a_subscriber_may_decline_an_event_at_the_moment_it_happens() -> None:
    logger = logging.getLogger("oncely")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        ticks: list[int] = []
        bus = EventBus(lambda: ticks.append(1) or AT)  # type: ignore[func-returns-value]
        seen: list[str] = []
        bus.subscribe(lambda event: seen.append(event.name), when=logs_event)
        assert bus.wants("job.failed") and not bus.wants("job.started")
        bus.emit("job.started", job_id=1)  # DEBUG: not logged, so not built
        bus.emit("job.failed", job_id=1)
        assert seen == ["job.failed"] and ticks == [1]
        logger.setLevel(logging.DEBUG)
        assert bus.wants("job.started")
        bus.emit("job.started", job_id=2)
        assert seen == ["job.failed", "job.started"]
    finally:
        logger.setLevel(level)
