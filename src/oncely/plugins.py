"""Extension points that other installed packages fill through entry points.

``oncely.cli`` — a click command added to ``oncely`` (``metering``, ``demo``);
``oncely.web`` — a callable ``routes(app) -> list[Route | Page]`` mounted in the dashboard: a
Starlette route is mounted as it is, a :class:`Page` is drawn inside the dashboard's layout and,
with a ``nav`` label, linked from its navigation;
``oncely.metrics`` — a callable ``collector(app)`` returning a prometheus-client collector whose
families the dashboard's fleet ``/metrics`` serves beside its own (guarded: see
:mod:`oncely.observe.fleet`). Building it must not touch the store; ``collect()`` reads it at
scrape time, in a worker thread.
Only names are read until a plugin is used, so a plugin whose extra is missing breaks nothing but
itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

CLI_GROUP = "oncely.cli"
WEB_GROUP = "oncely.web"
METRICS_GROUP = "oncely.metrics"


@dataclass(frozen=True)
class Page:
    """A dashboard page an add-on adds: its ``oncely.web`` plugin returns it among its routes.

    ``body()`` runs in a worker thread on every GET of ``path`` and returns the page's content
    as HTML that the add-on escaped itself (render it with an autoescaping template); the
    dashboard puts it under ``title`` in its own layout, behind the same sign-in rules and
    Content-Security-Policy as its pages (so: no inline script or style). ``nav`` is the label of
    its link in the navigation (None: no link). An :class:`oncely.NotFound` or
    :class:`oncely.ConfigError` it raises is shown as the dashboard's 404 or 400 page.
    """

    path: str
    title: str
    body: Callable[[], str]
    nav: str | None = None


def plugin_entry_points(group: str) -> dict[str, EntryPoint]:
    """The installed plugins of ``group`` by name (the first one wins when two share a name)."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=group):
        found.setdefault(entry.name, entry)
    return found
