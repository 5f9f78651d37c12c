"""Versioned schema migrations, one folder per dialect.

Files are named ``NNNN_description.sql``; ``NNNN`` is the version the file brings the schema to.
Drivers apply the missing ones in order, each in its own transaction, and record them in
``oncely_schema_migrations``. A database whose version is newer than the newest file here was
migrated by a newer oncely: drivers refuse to run against it
(:class:`~oncely.errors.SchemaMismatch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


_FOLDERS = {"postgresql": "postgres"}


@cache
def migrations_for(dialect: str) -> tuple[Migration, ...]:
    folder = resources.files("oncely.store.migrations").joinpath(_FOLDERS.get(dialect, dialect))
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        number, _, rest = entry.name.partition("_")
        found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..N: {versions}")
    return tuple(found)


def latest_version(dialect: str) -> int:
    return len(migrations_for(dialect))
