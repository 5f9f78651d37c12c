"""A transaction on the job store for application SQL: :meth:`oncely.App.transaction`.

Application tables may live in the job store, so a job can be enqueued in the same transaction
as the rows it is about (the "transactional outbox"). The two stores' drivers take parameters in
different styles — ``sqlite3`` wants ``?`` or ``:name``, psycopg ``%s`` or ``%(name)s`` — so SQL
written against one would fail on the other. :meth:`Transaction.execute` accepts one style on
both stores, psycopg's (DB-API ``format``/``pyformat``):

* ``%s`` for a positional parameter (params a sequence);
* ``%(name)s`` for a named one (params a mapping);
* ``%%`` for a literal ``%`` — always, as psycopg requires when parameters are passed.

On SQLite the statement is rewritten to ``?`` / ``:name``; on PostgreSQL it is passed as it is.
``tx.paramstyle`` says the accepted style (``"pyformat"``). ``tx.connection`` is the driver's own
connection, in the driver's own style (``tx.native_paramstyle``), for SQL written per dialect
(``tx.dialect``: ``"sqlite"`` or ``"postgresql"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from oncely.errors import ConfigError

PARAMSTYLE = "pyformat"
NATIVE_PARAMSTYLE = {"sqlite": "qmark", "postgresql": "pyformat"}
_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\))?(?P<kind>.)", re.DOTALL)


def to_qmark(sql: str, params: Sequence[Any] | Mapping[str, Any]) -> str:
    """``sql`` in pyformat style, rewritten for ``sqlite3`` (``?`` or ``:name``)."""
    named = isinstance(params, Mapping)

    def swap(match: re.Match[str]) -> str:
        name, kind = match.group("name"), match.group("kind")
        if kind == "%" and name is None:
            return "%"
        if kind != "s":
            raise ConfigError(f"SQL placeholder {match.group(0)!r} is not supported: use %s, "
                              "%(name)s, or %% for a literal %")
        if named != (name is not None):
            raise ConfigError("SQL mixes placeholder styles with its params: use %s with a "
                              "sequence of params, %(name)s with a mapping")
        return f":{name}" if name is not None else "?"

    return _PLACEHOLDER.sub(swap, sql)


class Transaction:
    """One transaction on the job store: it commits when the ``with`` block ends without an
    exception, and rolls back otherwise. Pass it to ``app.enqueue_job(..., connection=tx)`` to
    enqueue inside it."""

    paramstyle = PARAMSTYLE

    def __init__(self, connection: Any, dialect: str) -> None:
        self.connection = connection
        self.dialect = dialect
        self.native_paramstyle = NATIVE_PARAMSTYLE.get(dialect, PARAMSTYLE)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        """Run one statement written with ``%s`` / ``%(name)s`` placeholders on either store;
        returns the driver's cursor (``fetchone()``, ``fetchall()``, ``rowcount``)."""
        bound: Sequence[Any] | Mapping[str, Any] = (
            params if isinstance(params, Mapping) else tuple(params)
        )
        native = to_qmark(sql, bound)  # also checks the placeholders, the same on both stores
        if self.dialect == "sqlite":
            return self.connection.execute(native, bound)
        return self.connection.execute(sql, bound)

    def __repr__(self) -> str:
        return f"<Transaction {self.dialect} paramstyle={self.paramstyle}>"
