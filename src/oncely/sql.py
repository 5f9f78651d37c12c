"""Named SQL files and versioned migrations, for the engine's store and for applications that
keep their own tables next to it.

Public on purpose: applications built on oncely (the billing workloads are one) keep their SQL in
``.sql`` files and migrate their own tables in the job store's database, the way the engine does.
This module is the one place that reads such files and applies such migrations; it depends on
nothing but :mod:`oncely.errors`, so an application may import it without reaching into the
store package (``oncely.store`` stays private: an import contract keeps applications out).

Named SQL
=========

A ``.sql`` file holds blocks that each start with a ``-- name: <query_name>`` line and run to the
next such line. :func:`load_queries` reads every such file of a folder inside a package into a
:class:`Queries` mapping (a name defined twice is an error); files named like migrations
(``NNNN_description.sql``) are left out, so queries and migrations may share a folder.

Migrations
==========

Files named ``NNNN_description.sql``: ``NNNN`` is the version the file brings the schema to,
numbered 1..N without gaps (:func:`load_migrations` refuses anything else). Beside each may be
its down step, ``NNNN_description.down.sql``, which brings the schema back to ``NNNN - 1``.
:func:`migrate` applies the missing ones in order, each in its own transaction together with the
record of it, through a :class:`MigrationLedger` that says how to lock, read and record versions
on the caller's database; with ``to`` below the current version it runs the down steps instead,
newest first, each in its own transaction together with the removal of its record, after
checking that every one of them exists (:class:`MissingDownStep` otherwise, before anything
runs). Every step re-reads the version under the ledger's lock, so concurrent migrators apply
each version exactly once; a schema newer than the newest file is refused with
:class:`~oncely.errors.SchemaMismatch`. :func:`status` lists the steps, applied and pending.
A version, once released, keeps its number and name on every dialect: a database records the
versions it has, and a number that meant different steps on two dialects could not be upgraded
by one list.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any, Protocol, TypeVar

from oncely.errors import ConfigError, SchemaMismatch

__all__ = [
    "MigrateResult",
    "Migration",
    "MigrationLedger",
    "MigrationStep",
    "MissingDownStep",
    "Queries",
    "load_migrations",
    "load_queries",
    "migrate",
    "parse_queries",
    "split_statements",
    "status",
]

T = TypeVar("T")

_NAME = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)(\.down)?\.sql$")


# named SQL ---------------------------------------------------------------------------------------


def parse_queries(text: str) -> dict[str, str]:
    """The ``-- name:`` blocks of one file's ``text``, by name."""
    queries: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        name = match.group(1)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = text[match.end() : end].strip()
    return queries


class Queries(dict[str, str]):
    """The named queries of one folder; a missing name says which folder lacks it. A dict, so
    the lookup on every statement a store runs costs what a dict lookup costs."""

    def __init__(self, where: str, queries: Mapping[str, str]) -> None:
        super().__init__(queries)
        self.where = where

    def __missing__(self, name: str) -> str:
        raise KeyError(f"no query {name!r} in {self.where}")


def load_queries(package: str, folder: str) -> Queries:
    """Every named query in the ``.sql`` files of ``folder`` inside ``package`` (migration files
    left out)."""
    where = f"{package}/{folder}"
    found: dict[str, str] = {}
    entries = resources.files(package).joinpath(folder).iterdir()
    for entry in sorted(entries, key=lambda item: item.name):
        if not entry.name.endswith(".sql") or _MIGRATION_FILE.match(entry.name):
            continue
        for name, body in parse_queries(entry.read_text(encoding="utf-8")).items():
            if name in found:
                raise ValueError(f"query {name!r} is defined in two files of {where}")
            found[name] = body
    return Queries(where, found)


def split_statements(script: str) -> list[str]:
    """The statements of a script, to run one by one inside the caller's transaction (SQLite's
    ``executescript`` would commit). Comment-only pieces are dropped."""
    statements: list[str] = []
    start = 0
    for index, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : index + 1]):
            statements.append(script[start : index + 1].strip())
            start = index + 1
    statements.append(script[start:].strip())
    return [statement for statement in statements if _has_code(statement)]


def _has_code(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


# migrations --------------------------------------------------------------------------------------


class MissingDownStep(ConfigError):
    """A rollback needs a down step (``NNNN_name.down.sql``) that does not exist."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    down: str | None = None  # the down step's script; None when there is no .down.sql

    @property
    def label(self) -> str:
        """``0003_queue_controls``: the file's name without ``.sql``."""
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class MigrateResult:
    from_version: int
    to_version: int
    applied: tuple[str, ...]  # labels of the migrations this call applied
    reverted: tuple[str, ...] = ()  # labels of the migrations whose down step this call ran

    def summary(self, what: str) -> str:
        """One line saying what the call did to ``what`` (e.g. "the metering schema")."""
        if self.reverted:
            return (f"rolled {what} back from version {self.from_version} to "
                    f"{self.to_version}: ran the down steps of {', '.join(self.reverted)}")
        if self.applied:
            return (f"migrated {what} from version {self.from_version} "
                    f"to {self.to_version}: {', '.join(self.applied)}")
        return f"{what} is current (version {self.to_version})"


@dataclass(frozen=True)
class MigrationStep:
    """One line of :func:`status`: a migration and whether the database has it."""

    version: int
    label: str
    applied: bool
    reversible: bool  # a down step exists beside it


def load_migrations(package: str, folder: str) -> tuple[Migration, ...]:
    """The migration files of ``folder`` inside ``package``, by version, numbered 1..N."""
    ups: dict[int, tuple[str, str]] = {}
    downs: dict[int, str] = {}
    for entry in resources.files(package).joinpath(folder).iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            text = entry.read_text(encoding="utf-8")
            version = int(match.group(1))
            if match.group(3):
                downs[version] = text
            else:
                ups[version] = (match.group(2), text)
    orphans = sorted(set(downs) - set(ups))
    if orphans:
        raise RuntimeError(f"down steps without a migration in {package}/{folder}: {orphans}")
    found = [Migration(version, name, text, downs.get(version))
             for version, (name, text) in sorted(ups.items())]
    versions = [migration.version for migration in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations in {package}/{folder} are not numbered 1..N: {versions}")
    return tuple(found)


class MigrationLedger(Protocol):
    """How :func:`migrate` keeps the record of applied versions on one database. Every method
    runs on a connection inside a transaction :func:`migrate` opened."""

    def lock(self, conn: Any) -> None:
        """Serialise migrators until the transaction ends (a write lock, an advisory lock)."""

    def prepare(self, conn: Any) -> None:
        """Create the record (a table) if it does not exist yet."""

    def version(self, conn: Any) -> int:
        """The newest version applied; 0 for a new database."""

    def run(self, conn: Any, script: str) -> None:
        """Run one migration script."""

    def record(self, conn: Any, migration: Migration) -> None:
        """Record ``migration`` as applied."""

    def unrecord(self, conn: Any, migration: Migration) -> None:
        """Remove the record of ``migration`` (its down step ran)."""




def migrate(
    run: Callable[[Callable[[Any], Any]], Any],
    ledger: MigrationLedger,
    migrations: Sequence[Migration],
    what: str = "database schema",
    to: int | None = None,
) -> MigrateResult:
    """Bring the database to version ``to`` (default: the newest migration): apply the missing
    migrations in order, or run the down steps of the newer ones, newest first; each step in its
    own transaction (``run`` opens one per call). ``what`` names the schema in errors."""
    before = int(run(partial(_current, ledger)))
    latest = migrations[-1].version if migrations else 0
    if before > latest:
        raise SchemaMismatch(newer_message(what, before, latest))
    target = latest if to is None else to
    if not 0 <= target <= latest:
        raise ConfigError(f"{what} has versions 0 to {latest}; cannot migrate to {target}")
    if target < before:
        steps = [m for m in reversed(migrations) if target < m.version <= before]
        missing = [m.label for m in steps if m.down is None]
        if missing:
            raise MissingDownStep(
                f"{what}: cannot go down to version {target}: {missing[0]} has no down step "
                f"({missing[0]}.down.sql)"
            )
        reverted = [m.label for m in steps if run(partial(_revert, ledger, m))]
        return MigrateResult(before, int(run(ledger.version)), (), tuple(reverted))
    applied = [
        migration.label
        for migration in migrations
        if before < migration.version <= target and run(partial(_apply, ledger, migration))
    ]
    after = int(run(ledger.version))
    return MigrateResult(before, after, tuple(applied))


def status(
    read: Callable[[Callable[[Any], Any]], Any],
    ledger: MigrationLedger,
    migrations: Sequence[Migration],
) -> tuple[int, list[MigrationStep]]:
    """The database's version and every migration with whether it is applied (versions apply
    in order, so those up to the version are). Reads only: a database without the record table
    is at version 0."""
    current = int(read(ledger.version))
    return current, [MigrationStep(m.version, m.label, m.version <= current, m.down is not None)
                     for m in migrations]


def newer_message(what: str, found: int, latest: int) -> str:
    return f"{what} is version {found}, newer than this oncely ({latest}); upgrade oncely"


def _current(ledger: MigrationLedger, conn: Any) -> int:
    ledger.lock(conn)  # concurrent CREATE … IF NOT EXISTS can collide
    ledger.prepare(conn)
    return ledger.version(conn)


def _apply(ledger: MigrationLedger, migration: Migration, conn: Any) -> bool:
    ledger.lock(conn)
    # Another migrator may have applied it while this one waited for the lock.
    if ledger.version(conn) >= migration.version:
        return False
    ledger.run(conn, migration.sql)
    ledger.record(conn, migration)
    return True


def _revert(ledger: MigrationLedger, migration: Migration, conn: Any) -> bool:
    ledger.lock(conn)
    # Another migrator may have moved the schema while this one waited for the lock.
    if ledger.version(conn) != migration.version:
        return False
    assert migration.down is not None
    ledger.run(conn, migration.down)
    ledger.unrecord(conn, migration)
    return True
