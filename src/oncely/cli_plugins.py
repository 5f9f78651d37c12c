"""Command groups that other packages add to ``oncely``, found by entry point and loaded on use.

A package registers a click command under the ``oncely.cli`` entry-point group (the billing
workloads add ``metering`` and ``demo`` this way). Only the names are read for ``oncely --help``;
the command's module is imported when that command runs, so a plugin whose extra is missing
breaks nothing but itself, and ``oncely jobs`` never pays for importing DuckDB or Stripe.
"""

from __future__ import annotations

import click

from oncely.errors import ConfigError
from oncely.plugins import CLI_GROUP, plugin_entry_points


class PluginGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *plugin_entry_points(CLI_GROUP)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        own = super().get_command(ctx, cmd_name)
        if own is not None:
            return own
        entry = plugin_entry_points(CLI_GROUP).get(cmd_name)
        if entry is None:
            return None
        try:
            command = entry.load()
        except ImportError as exc:
            raise ConfigError(
                f"'oncely {cmd_name}' needs a module that is not installed ({exc.name}); "
                f"install the extra that provides it, e.g. pip install 'oncely[demo]'"
            ) from None
        if not isinstance(command, click.Command):
            raise ConfigError(
                f"plugin {cmd_name!r} ({entry.value}) is not a click command"
            )
        return command
