"""The engine's schema migrations, one folder per dialect: ``store/sqlite/migrations`` and
``store/postgres/migrations``, with the same file names and version numbers in both (a step one
dialect does not need is a documented no-op there), so a version means the same step on every
database. Files are read and applied by :mod:`oncely.sql`; applied versions are recorded in
``oncely_schema_migrations``. A database whose version is newer than the newest file here was
migrated by a newer oncely: stores refuse to run against it
(:class:`~oncely.errors.SchemaMismatch`).
"""

from __future__ import annotations

from functools import cache

from oncely import sql
from oncely.errors import SchemaMismatch

Migration = sql.Migration

# dialect (Store.dialect, or the folder name) -> the subpackage holding its migrations
_PACKAGES = {
    "sqlite": "oncely.store.sqlite",
    "postgresql": "oncely.store.postgres",
    "postgres": "oncely.store.postgres",
}


@cache
def migrations_for(dialect: str) -> tuple[sql.Migration, ...]:
    try:
        package = _PACKAGES[dialect]
    except KeyError:
        raise ValueError(f"no migrations for dialect {dialect!r}") from None
    return sql.load_migrations(package, "migrations")


def latest_version(dialect: str) -> int:
    return len(migrations_for(dialect))


def require_current(found: int, dialect: str) -> None:
    """Raise SchemaMismatch unless schema version ``found`` is the one this code needs."""
    needed = latest_version(dialect)
    if found < needed:
        raise SchemaMismatch(
            f"database schema is version {found}, this oncely needs {needed}: "
            "run `oncely migrate`"
        )
    if found > needed:
        raise SchemaMismatch(sql.newer_message("database schema", found, needed))
