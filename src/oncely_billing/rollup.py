"""The daily usage rollup: units per (organization, UTC day), refreshed from a usage source.

A refresh asks the source once for per-project daily counts over a window, maps projects to
organizations (deleted projects do not count, ever), sums per (organization, day) with numpy,
compares with the rollup rows already stored for the window, and writes only the difference:
upserts for new or changed rows, deletes for rows that no longer have usage (a project was
deleted). Writes are set-based statements of ``rollup_chunk_size`` rows, grouped into a few
fenced transactions so the job store's write lock is never held for long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

import oncely
from oncely_billing import db
from oncely_billing.usage import IntArray, UsageCounts

DAY_BITS = 16  # days of one window fit in 16 bits of a combined (org, day) key
STATEMENTS_PER_TRANSACTION = 20
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ProjectMap:
    """Live (not deleted) projects, sorted by id, with their organization."""

    project_ids: IntArray
    org_ids: IntArray

    @classmethod
    def load(cls, app: oncely.App) -> ProjectMap:
        dialect = db.sql_dialect(app)
        with db.connection(app) as conn:
            matrix = db.fetch_ints(conn, dialect, "projects_active", None, 2)
        return cls(matrix[:, 0].copy(), matrix[:, 1].copy())

    def orgs_of(self, project_ids: IntArray) -> tuple[IntArray, BoolArray]:
        """The organization of each project id, and which ids are live projects at all."""
        if self.project_ids.size == 0:
            return np.zeros_like(project_ids), np.zeros(project_ids.shape, dtype=bool)
        index = np.searchsorted(self.project_ids, project_ids)
        index = np.minimum(index, self.project_ids.size - 1)
        live = self.project_ids[index] == project_ids
        return self.org_ids[index], live



@dataclass(frozen=True)
class OrgDays:
    """Usage per (organization, epoch day), sorted by (organization, day)."""

    org_id: IntArray
    day: IntArray
    traces: IntArray
    observations: IntArray
    scores: IntArray

    @classmethod
    def empty(cls) -> OrgDays:
        nothing = np.zeros(0, dtype=np.int64)
        return cls(nothing, nothing, nothing, nothing, nothing)

    @classmethod
    def from_matrix(cls, matrix: npt.NDArray[np.int64]) -> OrgDays:
        if matrix.shape[0] == 0:
            return cls.empty()
        order = np.lexsort((matrix[:, 1], matrix[:, 0]))
        matrix = matrix[order]
        return cls(*(matrix[:, index].copy() for index in range(5)))

    def __len__(self) -> int:
        return int(self.org_id.shape[0])

    def keys(self, first_day: int) -> IntArray:
        return (self.org_id << DAY_BITS) | (self.day - first_day)

    def take(self, index: IntArray) -> OrgDays:
        return OrgDays(self.org_id[index], self.day[index], self.traces[index],
                       self.observations[index], self.scores[index])

    def row_chunks(self, size: int, width: int = 5) -> Iterator[list[list[int]]]:
        """The rows (first ``width`` columns) as lists, ``size`` at a time."""
        columns = (self.org_id, self.day, self.traces, self.observations, self.scores)[:width]
        for start in range(0, len(self), size):
            chunk = np.stack([column[start : start + size] for column in columns], axis=1)
            yield chunk.tolist()

    def total(self) -> int:
        return int((self.traces + self.observations + self.scores).sum())


def aggregate(counts: UsageCounts, projects: ProjectMap, first_day: int) -> OrgDays:
    """Sum per-project daily counts into per-organization daily usage (live projects only)."""
    if len(counts) == 0:
        return OrgDays.empty()
    orgs, live = projects.orgs_of(counts.project_id)
    day = counts.bucket[live] // 86400
    if day.size and (day.min() < first_day or day.max() - first_day >= 1 << DAY_BITS):
        raise ValueError("usage bucket outside the refreshed window")
    keys = (orgs[live] << DAY_BITS) | (day - first_day)
    unique, inverse = np.unique(keys, return_inverse=True)

    def summed(values: IntArray) -> IntArray:
        return np.bincount(inverse, weights=values[live], minlength=unique.size).astype(np.int64)

    return OrgDays(
        unique >> DAY_BITS, (unique & ((1 << DAY_BITS) - 1)) + first_day,
        summed(counts.traces), summed(counts.observations), summed(counts.scores),
    )


def load_window(app: oncely.App, first_day: int, last_day: int) -> OrgDays:
    dialect = db.sql_dialect(app)
    params = {"first_day": first_day, "last_day": last_day}
    with db.connection(app) as conn:
        return OrgDays.from_matrix(db.fetch_ints(conn, dialect, "rollup_window", params, 5))


def diff(new: OrgDays, old: OrgDays, first_day: int) -> tuple[OrgDays, OrgDays]:
    """(rows to upsert, rows to delete) turning ``old`` into ``new``."""
    new_keys, old_keys = new.keys(first_day), old.keys(first_day)
    _, in_new, in_old = np.intersect1d(new_keys, old_keys, assume_unique=True,
                                       return_indices=True)
    changed = (
        (new.traces[in_new] != old.traces[in_old])
        | (new.observations[in_new] != old.observations[in_old])
        | (new.scores[in_new] != old.scores[in_old])
    )
    only_new = np.flatnonzero(~np.isin(new_keys, old_keys, assume_unique=True))
    upsert_index = np.sort(np.concatenate([in_new[changed], only_new]))
    delete_index = np.flatnonzero(~np.isin(old_keys, new_keys, assume_unique=True))
    return new.take(upsert_index), old.take(delete_index)


@dataclass(frozen=True)
class RollupWrite:
    upserted: int
    deleted: int
    statements: int


def write(
    ctx: oncely.JobContext,
    upserts: OrgDays,
    deletes: OrgDays,
    chunk_size: int,
    finish: Callable[[Any, str], None],
) -> RollupWrite:
    """Write the difference under the job's fence; ``finish(conn, dialect)`` runs in the last
    transaction (the job records its progress there, so it moves only once all rows are in)."""
    dialect = db.sql_dialect(ctx.app)
    now = ctx.now().timestamp()
    columns = ("org_id", "day", "traces", "observations", "scores")
    # Rows are materialized one chunk at a time; the statements are grouped into a few
    # transactions, the last of which also records the job's progress.
    statements: list[tuple[str, OrgDays, int, int]] = [
        ("rollup_upsert_batch", upserts, 5, start) for start in range(0, len(upserts), chunk_size)
    ] + [("rollup_delete_batch", deletes, 2, start) for start in range(0, len(deletes), chunk_size)]
    groups = list(_groups(statements, STATEMENTS_PER_TRANSACTION)) or [[]]
    for number, group in enumerate(groups, start=1):
        with ctx.fenced() as conn:
            for name, source, width, start in group:
                part = source.take(np.arange(start, min(start + chunk_size, len(source))))
                rows = next(part.row_chunks(chunk_size, width))
                params = db.batch_params(dialect, columns[:width], rows)
                db.run(conn, dialect, name, {**params, "now": now})
            if number == len(groups):
                finish(conn, dialect)
    return RollupWrite(len(upserts), len(deletes), len(statements))


def _groups(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
