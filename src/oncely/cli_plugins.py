"""Command groups that live with the code they drive and load only when called.

``oncely metering …`` belongs to :mod:`oncely.metering` and needs its extra (DuckDB, Stripe):
importing it for every ``oncely`` call would slow the others down and break them where the
extra is not installed, so the group is imported on first use.
"""

from __future__ import annotations

import importlib

import click

from oncely.errors import ConfigError

PLUGINS = {
    "metering": ("oncely.metering.cli", "metering", "pip install 'oncely[metering]'"),
}


class PluginGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *PLUGINS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in PLUGINS:
            return super().get_command(ctx, cmd_name)
        module_name, attr, install = PLUGINS[cmd_name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"'oncely {cmd_name}' needs an extra that is not installed ({exc.name}): {install}"
            ) from None
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command
