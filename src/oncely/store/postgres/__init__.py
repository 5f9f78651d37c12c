"""The PostgreSQL dialect: the scale-out store (:class:`PostgresStore`), its claim cycle, its
named SQL (``sql/*.sql``) and its migrations (``migrations/NNNN_*.sql``, the same names and
numbers as SQLite's)."""

from oncely.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
