"""What the store can hold: results, checkpoints and error texts, checked in the worker.

Both stores keep results, checkpoints and errors as JSON text (PostgreSQL as ``jsonb``). Some
values pass ``json.dumps`` on one store and not the other, or not at all:

==============================  ==============================================================
value                           why the store cannot hold it
==============================  ==============================================================
a string with NUL (``\\x00``)    ``jsonb`` refuses ``\\u0000``; SQLite would keep it, so refused
                                on both stores alike
a lone surrogate (``\\ud800``)   not valid UTF-8: neither store can encode it
an int beyond Python's digit    ``json.dumps`` raises (``sys.get_int_max_str_digits()``,
limit (4,300 digits)            4,300 by default)
NaN, infinity, other objects    not JSON: kept as ``{"repr": "…"}`` (as documented for results)
==============================  ==============================================================

A value the store cannot hold is refused here, in the handler's thread, before the store is
called: a result makes that job alone fail with ``result not storable: …``, a checkpoint raises
:class:`~oncely.errors.ArgsNotJSON` to the handler, and error texts (messages and tracebacks,
which must always be recorded) are cleaned instead: NUL becomes ``\\x00``, a lone surrogate its
``\\udXXX`` escape. None of this touches another job's outcome.

The checks are cheap for ordinary values: ``None``, booleans and small ints pass at once; a
string is scanned for NUL with one ``in`` and for surrogates only when it is not ASCII; a
container is encoded once (as the worker did anyway) and its JSON text scanned the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any

from oncely.errors import ArgsNotJSON

# ints whose decimal text is surely within the default digit limit (4300 digits > 14000 bits)
_SAFE_INT_BITS = 14_000
# a JSON escape of NUL that is not itself an escaped backslash followed by "u0000"
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class NotStorable(ArgsNotJSON):
    """A result or checkpoint the store cannot hold; the message says why."""


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        raise NotStorable(f"{what}: a string contains a NUL character (\\x00)")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = text[exc.start]
            raise NotStorable(f"{what}: a string contains a lone surrogate "
                              f"({ascii(bad)[1:-1]}), which is not valid UTF-8") from None


def _check_int(value: int, what: str) -> None:
    if value.bit_length() > _SAFE_INT_BITS:
        try:
            str(value)
        except ValueError:
            raise NotStorable(f"{what}: an int of {value.bit_length()} bits is beyond what JSON "
                              "can convert (sys.get_int_max_str_digits())") from None


def _scalar(value: Any, what: str) -> bool:
    """True if ``value`` is a JSON scalar the store can hold as is; NotStorable if it cannot."""
    kind = type(value)
    if value is None or kind is bool:
        return True
    if kind is int:
        _check_int(value, what)
        return True
    if kind is str:
        _check_text(value, what)
        return True
    return False


def _json_text(value: Any, what: str) -> str:
    """The JSON text of a container; NotStorable for what no store holds, TypeError/ValueError
    for what is not JSON."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise NotStorable(f"{what}: an int is beyond what JSON can convert ({exc})") from None
        raise
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise NotStorable(f"{what}: a string contains a NUL character (\\x00)")
    _check_text(text, what)
    return text


def storable(value: Any, what: str = "result not storable") -> Any:
    """``value`` as it will be stored: JSON values as a JSON round trip, anything else JSON
    cannot hold as ``{"repr": …}``. Raises NotStorable (its message starts with ``what``) for
    what no store can hold (see the module doc)."""
    if _scalar(value, what):
        return value  # the common case: a handler that returns nothing, a number, a word
    try:
        text = _json_text(value, what)
    except (TypeError, ValueError):
        return _as_repr(value, what)
    return json.loads(text)


def _as_repr(value: Any, what: str) -> dict[str, str]:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__, or an int too long to print
        raise NotStorable(f"{what}: not JSON, and its repr() failed "
                          f"({type(exc).__name__})") from None
    return {"repr": clean_text(text)}


def checked_checkpoint(data: Any, job_id: int) -> Any:
    """``data`` if the store can hold it as a checkpoint; NotStorable otherwise (a checkpoint is
    read back by the next attempt, so a repr stand-in would not do)."""
    what = f"checkpoint of job {job_id} not storable"
    if not _scalar(data, what):
        try:
            _json_text(data, what)
        except (TypeError, ValueError) as exc:
            raise NotStorable(f"{what}: {exc}") from None
    return data


def clean_text(text: str) -> str:
    """Error text the store can hold: NUL and lone surrogates replaced by their escapes."""
    if text.isascii():
        return text.replace("\x00", "\\x00") if "\x00" in text else text
    text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
