"""Storage backends, chosen by URL scheme.

``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` and ``sqlite://:memory:`` open the
embedded store; ``postgresql://…`` (or ``postgres://…``) opens the PostgreSQL store, with an
optional ``?schema=name`` so several apps can share one database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from oncely.errors import InvalidURL

if TYPE_CHECKING:
    from oncely.store.base import Store

DEFAULT_URL = "sqlite:///oncely.db"


def open_store(url: str) -> Store:
    """Open the store ``url`` names. Raises InvalidURL for a URL oncely cannot use."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidURL("database URL is empty; use sqlite:///path/oncely.db or postgresql://…")
    url = url.strip()
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise InvalidURL(f"malformed database URL {url!r}: {exc}") from None
    if scheme == "sqlite":
        from oncely.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from oncely.store.postgres import PostgresStore
        except ImportError as exc:  # psycopg is an optional extra
            raise InvalidURL(
                f"PostgreSQL support is not installed ({exc.name}); "
                "run: pip install 'oncely[postgres]'"
            ) from None
        return PostgresStore(url)
    shown = scheme or "(none)"
    raise InvalidURL(
        f"unsupported database URL scheme {shown!r} in {url!r}; "
        "use sqlite:///path/oncely.db or postgresql://user@host/db"
    )
