"""Named SQL, one file set per dialect.

Each ``sql/<dialect>/*.sql`` file holds blocks that start with a ``-- name: <query_name>`` line;
the block runs until the next such line. :func:`load_queries` returns them as a mapping, so
drivers say ``self.q["job_claim_select"]`` and no SQL text lives in Python code.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        name = match.group(1)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        body = text[match.end() : end].strip()
        queries[name] = body
    return queries


@cache
def load_queries(dialect: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    folder = resources.files("oncely.store").joinpath("sql", dialect)
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, body in parse_queries(entry.read_text(encoding="utf-8")).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined in two {dialect} files")
            queries[name] = body
    return queries
