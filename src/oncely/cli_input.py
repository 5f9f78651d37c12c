"""What the ``oncely`` command reads and prints: loading ``--app``, the parameter types that
validate names and ids as click parses them, and the printer that keeps terminal control
characters in stored values from reaching the screen.

``--app module:attr`` imports the module with the current directory appended to ``sys.path``
(after the installed packages, so a stray ``rich.py`` or ``click.py`` there never shadows them).
Only ``--app`` adds it, and it stays for the rest of the command: a handler that imports a module
beside the app when it first runs (``from reports import build`` inside the function, common to
keep a worker's start fast) would otherwise fail in the worker hours later, not at load. Any
failure of the import or of a factory — an exception or a ``sys.exit()`` — becomes one line
naming what failed, with the full traceback logged at ``--log-level debug``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from oncely.errors import ConfigError, OncelyError
from oncely.validate import check_id, check_name, check_text

if TYPE_CHECKING:
    from oncely.app import App

log = logging.getLogger("oncely.cli")

_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


# Click callbacks that check a value as it is parsed. They raise ConfigError (one line, exit 2),
# not click's BadParameter (which prints the usage too).
Check = Callable[[click.Context, click.Parameter, Any], Any]


def _label(param: click.Parameter) -> str:
    return param.opts[0] if param.opts and param.opts[0].startswith("-") else \
        (param.name or "value").upper()


def name_of(kind: str) -> Check:
    """The option's value must be a valid ``kind`` name (or absent)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return None if value is None else check_name(kind, value)
        except ConfigError as exc:
            raise ConfigError(f"{_label(param)}: {exc}") from None

    return check


def id_of(what: str) -> Check:
    """The value must be an id either store can hold (1 to 2**63-1)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        return None if value is None else check_id(what, value)

    return check


def stored_text(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Free text that will be stored: no NUL character, no lone surrogate."""
    return None if value is None else check_text(_label(param), str(value))


def load_app(path: str) -> App:
    from oncely.app import App

    module_name, _, attr = path.partition(":")
    if not module_name or not attr or not attr.isidentifier():
        raise ConfigError(f"--app {path!r} must look like 'package.module:app'")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    try:
        module = importlib.import_module(module_name)
    except OncelyError:
        raise  # oncely's own refusal (a bad setting, an invalid schedule): already one line
    except SystemExit as exc:  # sys.exit() at import: not a way to end an oncely command
        raise _exited(path, f"{module_name!r} exited while importing", exc) from None
    except Exception as exc:  # the user's module: any failure is theirs to see in one line
        raise _failure(path, f"cannot import {module_name!r}", exc) from None
    found = getattr(module, attr, None)
    if callable(found) and not isinstance(found, App):
        try:
            found = found()
        except OncelyError:
            raise
        except SystemExit as exc:
            raise _exited(path, f"{module_name}.{attr}() exited", exc) from None
        except Exception as exc:
            raise _failure(path, f"calling {module_name}.{attr}() failed", exc) from None
    if not isinstance(found, App):
        raise ConfigError(f"--app {path!r}: {attr!r} in {module_name!r} is not an oncely.App")
    return found


def _exited(path: str, what: str, exc: SystemExit) -> ConfigError:
    log.debug("--app %s: %s", path, what, exc_info=exc)
    return ConfigError(f"--app {path!r}: {what} (SystemExit {ascii(exc.code)[:80]}; the full "
                       "traceback is logged with --log-level debug)")


def _failure(path: str, what: str, exc: BaseException) -> ConfigError:
    log.debug("--app %s: %s", path, what, exc_info=exc)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    cause = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return ConfigError(f"--app {path!r}: {what}: {cause} (the full traceback is logged with "
                       "--log-level debug)")


def printable(value: object) -> str:
    """``value`` as text safe for a terminal: control characters (an escape sequence stored in
    an error message) and lone surrogates are shown escaped, never interpreted."""
    text = "" if value is None else str(value)
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], text)


def one_line(message: object) -> str:
    """``message`` as one printable line: a line break in a value it quotes (a path, a name) is
    shown escaped like any other control character, so an error is always one line."""
    return printable(message).replace("\r", "\\r").replace("\n", "\\n")


def emit(as_json: bool, rows: Any, columns: Sequence[str] | None = None,
         title: str | None = None) -> None:
    """Print rows as JSON (``as_json``) or as a table (or key/value pairs for one dict)."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text as RichText

    def cell(value: Any) -> RichText:  # plain text: a '[' in a value is not rich markup
        shown = json.dumps(value, default=str) if isinstance(value, dict | list) else value
        return RichText(printable(shown))

    console = Console(soft_wrap=True)
    if isinstance(rows, dict):
        table = Table(show_header=False, title=printable(title) if title else None)
        for key, value in rows.items():
            table.add_row(cell(key), cell(value))
        console.print(table)
        return
    table = Table(title=printable(title) if title else None)
    cols = list(columns or (rows[0].keys() if rows else []))
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*(cell(row.get(col)) for col in cols))
    console.print(table)
    if not rows:
        click.echo("(none)")
