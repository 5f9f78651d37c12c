"""Extension points that other installed packages fill through entry points.

``oncely.cli`` — a click command added to ``oncely`` (``metering``, ``demo``);
``oncely.web`` — a callable ``routes(app) -> list[Route]`` mounted in the dashboard.
Only names are read until a plugin is used, so a plugin whose extra is missing breaks nothing but
itself.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

CLI_GROUP = "oncely.cli"
WEB_GROUP = "oncely.web"


def plugin_entry_points(group: str) -> dict[str, EntryPoint]:
    """The installed plugins of ``group`` by name (the first one wins when two share a name)."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=group):
        found.setdefault(entry.name, entry)
    return found
