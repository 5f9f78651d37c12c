"""The SQLite dialect: the embedded store (:class:`SQLiteStore`), its claim cycle, its named SQL
(``sql/*.sql``) and its migrations (``migrations/NNNN_*.sql``, the same names and numbers as
PostgreSQL's)."""

from oncely.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
