"""Conversion between database rows and the store's dataclasses, shared by every driver.

Dialect-neutral on purpose: an instant may arrive as epoch seconds (SQLite ``REAL``) or as a
datetime (PostgreSQL ``timestamptz``), and a JSON column either as text (``json_text=True``) or
already decoded by the driver. Job errors are stored as a JSON array of objects whose ``at`` is an
ISO-8601 string, so both dialects hold the same document.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Protocol

from oncely.errors import ArgsNotJSON
from oncely.store.base import LeaseRow, ScheduleRow, SlotRecord, WorkerRow
from oncely.types import ErrorKind, Job, JobError, JobState, Overlap, SlotOutcome


class RowLike(Protocol):
    """A row addressable by column name (``sqlite3.Row``, a psycopg ``dict_row``, a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


# instants -------------------------------------------------------------------------------------


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; a naive datetime is taken to be UTC already."""
    tzinfo = value.tzinfo
    if tzinfo is UTC:
        return value
    if tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def to_epoch(value: datetime) -> float:
    return utc(value).timestamp()


def to_epoch_or_none(value: datetime | None) -> float | None:
    return None if value is None else to_epoch(value)


_fromtimestamp = datetime.fromtimestamp


def as_datetime(value: Any) -> datetime | None:
    """A column value (epoch seconds, datetime or NULL) as an aware UTC datetime."""
    if value is None:
        return None
    if value.__class__ is float:  # SQLite's REAL: the common case first
        return _fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        return utc(value)
    return _fromtimestamp(float(value), UTC)


def as_required_datetime(value: Any) -> datetime:
    converted = as_datetime(value)
    if converted is None:
        raise ValueError("a required timestamp column is NULL")
    return converted


# JSON -----------------------------------------------------------------------------------------


def dump_json(value: Any, what: str) -> str:
    """Compact JSON text for ``value``; ArgsNotJSON names ``what`` when it cannot be encoded."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArgsNotJSON(f"{what} cannot be stored as JSON: {exc}") from None


_loads = json.loads


def load_json(value: Any, *, json_text: bool) -> Any:
    if value is None or not json_text:
        return value
    if value == "{}":  # most args, results and checkpoints: no parser needed (a fresh object)
        return {}
    if value == "[]":
        return []
    return _loads(value)


def error_to_dict(error: JobError) -> dict[str, Any]:
    return {
        "attempt": error.attempt,
        "at": utc(error.at).isoformat(),
        "kind": str(error.kind),
        "message": error.message,
        "traceback": error.traceback,
    }


def error_from_dict(data: dict[str, Any]) -> JobError:
    return JobError(
        attempt=int(data["attempt"]),
        at=utc(datetime.fromisoformat(data["at"])),
        kind=ErrorKind(data["kind"]),
        message=str(data["message"]),
        traceback=data.get("traceback"),
    )


def dump_error(error: JobError | None) -> str | None:
    return None if error is None else dump_json(error_to_dict(error), "job error")


def load_errors(value: Any, *, json_text: bool) -> tuple[JobError, ...]:
    if not value or value == "[]":
        return ()
    decoded = load_json(value, json_text=json_text)
    if not decoded:
        return ()
    return tuple(error_from_dict(item) for item in decoded)


def load_queues(value: Any, *, json_text: bool) -> tuple[str, ...] | None:
    decoded = load_json(value, json_text=json_text)
    return None if decoded is None else tuple(str(queue) for queue in decoded)


# rows -----------------------------------------------------------------------------------------


# Enum members by value: a dict lookup per row instead of an Enum call (the claim's hot path).
_STATES = {member.value: member for member in JobState}
_OVERLAPS = {member.value: member for member in Overlap}


# The jobs table's columns are Job's fields, in this order (a unit test holds the two together).
JOB_COLUMNS = (
    "id", "queue", "task", "args", "state", "priority", "attempt", "max_attempts", "run_at",
    "created_at", "unique_key", "schedule", "slot", "singleton_key", "overlap", "timeout",
    "lease_owner", "lease_expires_at", "fence", "cancel_requested", "started_at", "finished_at",
    "result", "errors", "checkpoint", "concurrency_key",
)
_by_name = itemgetter(*JOB_COLUMNS)
# Positional getters by a row's column names: a ``sqlite3.Row`` looks a name up by comparing it
# with each column in turn, an index is read at once.
_by_position: dict[tuple[str, ...], Callable[[Any], tuple[Any, ...]]] = {}
_new = object.__new__
_set_attribute = object.__setattr__  # a frozen dataclass's own __setattr__ refuses


def _values_getter(row: RowLike) -> Callable[[Any], tuple[Any, ...]]:
    """Reads a row's job columns in :data:`JOB_COLUMNS` order."""
    if not isinstance(row, sqlite3.Row):  # a psycopg dict row, a dict
        return _by_name
    return _positions(tuple(row.keys()))


def _positions(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """Reads the job columns, in :data:`JOB_COLUMNS` order, of a row whose columns are
    ``names`` (found once per distinct column list)."""
    getter = _by_position.get(names)
    if getter is None:
        getter = itemgetter(*(names.index(column) for column in JOB_COLUMNS))
        _by_position[names] = getter
    return getter


def job_from_row(row: RowLike, *, json_text: bool) -> Job:
    """The job a row of the jobs table (any column order, more columns allowed) holds.

    Decoded on every claim, so: the row's values read in one go, and the Job built without its
    frozen dataclass ``__init__`` (one ``object.__setattr__`` per field): its ``__dict__`` is
    set to the fields at once; the result is the same object ``Job(**fields)`` builds, which a
    unit test holds."""
    return _job(_values_getter(row)(row), json_text, _Instants())


def jobs_from_rows(rows: Sequence[RowLike], *, json_text: bool) -> list[Job]:
    """The jobs of rows that came from one statement (they share their columns), as
    :func:`job_from_row` decodes them. The rows of a claim share instants (its start and lease
    expiry, often the enqueue time and due time): each distinct one is converted once."""
    if not rows:
        return []
    getter = _values_getter(rows[0])
    instants = _Instants()
    return [_job(getter(row), json_text, instants) for row in rows]


def jobs_from_tuples(
    names: Sequence[str], rows: Sequence[Sequence[Any]], *, json_text: bool
) -> list[Job]:
    """The jobs of plain tuple rows of one statement whose columns are ``names`` (more columns
    allowed): no per-row mapping is built, each row is read through one positional getter, and
    the rows share their decoded instants as in :func:`jobs_from_rows`."""
    if not rows:
        return []
    getter = _positions(tuple(names))
    instants = _Instants()
    return [_job(getter(row), json_text, instants) for row in rows]


def started_jobs(
    rows: Sequence[RowLike],
    *,
    json_text: bool,
    owner: str,
    lease_expires_at: datetime,
    started_at: datetime,
) -> list[Job]:
    """The jobs of waiting rows read by a claim, as the claim's start leaves them (SQLite's
    ``job_claim_start_many``: running, one more attempt, leased to ``owner`` until
    ``lease_expires_at``, the job's own fence advanced by one, started at ``started_at``), so
    the claim need not read back the rows it wrote."""
    jobs = jobs_from_rows(rows, json_text=json_text)
    for job in jobs:
        job.__dict__.update({
            "state": JobState.RUNNING,
            "attempt": job.attempt + 1,
            "lease_owner": owner,
            "lease_expires_at": lease_expires_at,
            "fence": job.fence + 1,
            "started_at": started_at,
        })
    return jobs


class _Instants(dict[Any, datetime | None]):
    """Column values (epoch seconds, datetimes, NULL) as aware UTC datetimes, each converted
    once: looking one up is a dict lookup."""

    def __missing__(self, value: Any) -> datetime | None:
        converted = self[value] = as_datetime(value)
        return converted


def _job(values: tuple[Any, ...], json_text: bool, instants: _Instants) -> Job:
    (id_, queue, task, args, state, priority, attempt, max_attempts, run_at, created_at,
     unique_key, schedule, slot, singleton_key, overlap, timeout, lease_owner, lease_expires_at,
     fence, cancel_requested, started_at, finished_at, result, errors, checkpoint,
     concurrency_key) = values
    if run_at is None or created_at is None:
        raise ValueError("a required timestamp column is NULL")
    job: Job = _new(Job)
    _set_attribute(job, "__dict__", {
        "id": int(id_),
        "queue": queue,
        "task": task,
        "args": load_json(args, json_text=json_text) or {},
        "state": _STATES.get(state) or JobState(state),
        "priority": int(priority),
        "attempt": int(attempt),
        "max_attempts": int(max_attempts),
        "run_at": instants[run_at],
        "created_at": instants[created_at],
        "unique_key": unique_key,
        "schedule": schedule,
        "slot": instants[slot],
        "singleton_key": singleton_key,
        "overlap": _OVERLAPS.get(overlap) or Overlap(overlap),
        "timeout": None if timeout is None else float(timeout),
        "lease_owner": lease_owner,
        "lease_expires_at": instants[lease_expires_at],
        "fence": int(fence),
        "cancel_requested": bool(cancel_requested),
        "started_at": instants[started_at],
        "finished_at": instants[finished_at],
        "result": load_json(result, json_text=json_text),
        "errors": load_errors(errors, json_text=json_text),
        "checkpoint": load_json(checkpoint, json_text=json_text),
        "concurrency_key": concurrency_key,
    })
    return job


def schedule_from_row(row: RowLike, *, json_text: bool) -> ScheduleRow:
    return ScheduleRow(
        name=row["name"],
        task=row["task"],
        spec=load_json(row["spec"], json_text=json_text),
        spec_hash=row["spec_hash"],
        cursor=as_datetime(row["cursor"]),
        created_at=as_required_datetime(row["created_at"]),
        updated_at=as_required_datetime(row["updated_at"]),
        declared_at=as_required_datetime(row["declared_at"]),
        revision=int(row["revision"]),
        hashes=tuple(h for h in (row["hashes"] or "").split(",") if h),
        origin=row["origin"],
        paused_at=as_datetime(row["paused_at"]),
        paused_reason=row["paused_reason"],
        switch_cursor=as_datetime(row["switch_cursor"]),
    )


def slot_from_row(row: RowLike) -> SlotRecord:
    return SlotRecord(
        schedule=row["schedule"],
        slot=as_required_datetime(row["slot"]),
        outcome=SlotOutcome(row["outcome"]),
        job_id=None if row["job_id"] is None else int(row["job_id"]),
        recorded_at=as_required_datetime(row["recorded_at"]),
        updated_at=as_required_datetime(row["updated_at"]),
        note=row["note"],
    )


def lease_from_row(row: RowLike) -> LeaseRow:
    return LeaseRow(
        key=row["key"],
        fence=int(row["fence"]),
        owner=row["owner"],
        job_id=None if row["job_id"] is None else int(row["job_id"]),
        acquired_at=as_datetime(row["acquired_at"]),
        expires_at=as_datetime(row["expires_at"]),
    )


def worker_from_row(row: RowLike, *, json_text: bool) -> WorkerRow:
    return WorkerRow(
        worker_id=row["worker_id"],
        hostname=row["hostname"],
        pid=int(row["pid"]),
        queues=load_queues(row["queues"], json_text=json_text),
        concurrency=int(row["concurrency"]),
        started_at=as_required_datetime(row["started_at"]),
        last_seen_at=as_required_datetime(row["last_seen_at"]),
        declared=_declared(row),
        tasks=load_queues(row["tasks"], json_text=json_text),
        clock_offset=None if row["clock_offset"] is None else float(row["clock_offset"]),
    )


def _declared(row: RowLike) -> dict[str, str] | None:
    raw = row["declared"]
    if not raw:
        return None
    loaded = json.loads(raw)
    return {str(name): str(digest) for name, digest in loaded.items()}
