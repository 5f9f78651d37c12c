"""The checks every value passes before it reaches a store, wherever it comes from.

The library (``enqueue``, ``enqueue_many``, schedules, queue declarations), the command line and
the dashboard's API all call these, so a value either store would refuse, or would store but no
command could address again, is refused at the edge with a :class:`~oncely.errors.ConfigError`
(exit code 2 on the command line, 400 over HTTP) naming what to fix — the same on SQLite and
PostgreSQL.

Limits:

=====================================  =====================================================
value                                  accepted
=====================================  =====================================================
queue, task and schedule names         1-200 characters: ASCII letters, digits, ``_ . : -``
unique, singleton and concurrency keys 1-1000 bytes of UTF-8 text, no control characters
job args                               a JSON object; no NUL character and no lone surrogate
                                       in any key or string (PostgreSQL stores neither)
priority                               a whole number from -2147483648 to 2147483647
max_attempts                           a whole number from 1 to 2147483647
delay                                  a finite number of seconds, at most 100 years
durations (a schedule's every,         a finite number of seconds, at most 100 years
misfire_grace and jitter, a limit's    (:func:`check_seconds`; each says its own minimum)
window, a retention age)
operator reasons (pause, cancel)       text of at most 1000 characters, no NUL character
                                       and no lone surrogate (:func:`check_reason`)
ids (jobs, anomalies)                  a whole number from 1 to 9223372036854775807
database URL                           see :func:`check_database_url`
=====================================  =====================================================
"""

from __future__ import annotations

import json
import math
import re
from datetime import timedelta
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

from oncely.errors import ArgsNotJSON, ConfigError, InvalidURL
from oncely.redaction import mask_url

NAME_MAX = 200
KEY_MAX_BYTES = 1000
INT32 = (-(2**31), 2**31 - 1)
ID_MAX = 2**63 - 1
DELAY_MAX = 100 * 366 * 86400.0  # seconds
REASON_MAX = 1000  # characters of an operator's reason

_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NAME_KINDS = ("queue", "task", "schedule")


def check_name(kind: str, name: object) -> str:
    """``name`` if it is a valid name of ``kind`` (``queue``, ``task``, ``schedule``, or a key:
    ``unique key``, ``singleton key``, ``concurrency key``), else ConfigError saying why."""
    if kind in _NAME_KINDS:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{kind} name {_shown(name)} is invalid: use 1-{NAME_MAX} letters, "
                              "digits, '_', '.', ':' or '-'")
        return name
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{kind} {_shown(name)} is invalid: it must be a non-empty string")
    bad = _CONTROL.search(name) or _SURROGATE.search(name)
    if bad:
        raise ConfigError(f"{kind} {_shown(name)} is invalid: it contains the character "
                          f"{bad.group()!a}; control characters and lone surrogates "
                          "cannot be stored")
    if len(name.encode()) > KEY_MAX_BYTES:
        raise ConfigError(f"{kind} {_shown(name)} is too long: at most {KEY_MAX_BYTES} bytes "
                          "of UTF-8")
    return name


def check_text(what: str, text: str) -> str:
    """``text`` unless it holds a NUL character or a lone surrogate (neither store keeps both)."""
    if "\x00" in text or _SURROGATE.search(text):
        raise ConfigError(f"{what} contains a NUL character or a lone surrogate "
                          f"({_shown(text)}); neither can be stored")
    return text


def check_reason(reason: object) -> str | None:
    """An operator's free-text reason (pausing a queue or a schedule, cancelling a job): None,
    or text of at most :data:`REASON_MAX` characters that both stores can keep."""
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise ConfigError(f"reason must be text, got {_shown(reason)}")
    check_text("reason", reason)
    if len(reason) > REASON_MAX:
        raise ConfigError(f"reason is too long: at most {REASON_MAX} characters, "
                          f"got {len(reason)}")
    return reason


def dump_args(task_name: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` as stored (a JSON round trip), or ArgsNotJSON saying what cannot be stored."""
    return encode_args(task_name, args)[0]


# Values whose JSON round trip gives them back unchanged (exact types: a subclass may not).
_PLAIN = frozenset({str, int, float, bool, type(None)})
# One encoder for every job (json.dumps with options builds a new one per call).
_ENCODE = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode


def encode_args(task_name: str, args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``args`` as stored and their JSON text (what a store writes), or ArgsNotJSON saying what
    cannot be stored. A flat dict of strings, numbers, booleans and nulls under string keys is
    its own round trip: it is copied rather than decoded again."""
    try:
        text = _ENCODE(args)
    except (TypeError, ValueError) as exc:
        raise ArgsNotJSON(f"arguments of {task_name!r} must be JSON-serialisable: {exc}") from None
    # json escapes NUL as \u0000 and leaves a lone surrogate raw: look closer only then.
    if "\\u0000" in text or _SURROGATE.search(text):
        where = _unstorable(args, "args")
        if where is not None:
            raise ArgsNotJSON(f"arguments of {task_name!r} cannot be stored: {where} holds a NUL "
                              "character or a lone surrogate")
    if args.__class__ is dict and all(
        key.__class__ is str and value.__class__ in _PLAIN for key, value in args.items()
    ):
        return dict(args), text
    return dict(json.loads(text)), text


def _unstorable(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value or _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}[{key!r}]"
            if isinstance(key, str) and ("\x00" in key or _SURROGATE.search(key)):
                return f"the key {inner}"
            found = _unstorable(item, inner)
            if found:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _unstorable(item, f"{path}[{index}]")
            if found:
                return found
    return None


def check_int(what: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what} must be a whole number from {low} to {high}, "
                          f"got {_shown(value)}")
    return value


def check_delay(value: float) -> float:
    if not math.isfinite(value) or abs(value) > DELAY_MAX:
        raise ConfigError(f"delay must be a finite number of seconds, at most {DELAY_MAX:.0f} "
                          f"(100 years), got {value!r}")
    return value


def check_seconds(what: str, value: object, minimum: float = 0.0, *,
                  zero: bool = True) -> float:
    """``value`` (a number of seconds or a ``timedelta``) as float seconds if it is finite, at
    least ``minimum`` (above it when ``zero`` is False) and at most :data:`DELAY_MAX` (100 years),
    else ConfigError naming ``what``. NaN, infinities and numbers too large for a float never
    pass, so no date arithmetic downstream can overflow."""
    seconds: float | None = None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            seconds = math.inf
    if seconds is None or not math.isfinite(seconds) or not (
            seconds >= minimum if zero else seconds > minimum) or seconds > DELAY_MAX:
        kind = (f"a finite number of seconds from {minimum:g} to" if zero or minimum else
                "a positive, finite number of seconds, at most")
        raise ConfigError(f"{what} must be {kind} {DELAY_MAX:.0f} (100 years), "
                          f"got {_shown(value)}")
    return seconds


def check_id(what: str, value: object) -> int:
    return check_int(f"{what} id", value, 1, ID_MAX)


def _shown(value: object, limit: int = 60) -> str:
    """A value quoted for a one-line message: escaped (no terminal control reaches the screen)
    and cut to ``limit`` characters."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# database URLs ----------------------------------------------------------------------------------

_SCHEMES = ("sqlite", "postgresql", "postgres")
_LIBPQ_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby",
                             "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
}
_LIBPQ_WHOLE_NUMBERS = ("connect_timeout", "keepalives", "keepalives_idle",
                        "keepalives_interval", "keepalives_count", "tcp_user_timeout")


def check_database_url(url: object) -> str:
    """``url`` if oncely can try to open it, else InvalidURL naming the part to fix (the URL
    itself is quoted masked). Parameters libpq would only refuse when connecting (a port out of
    range, an unknown ``sslmode``) are checked here, so they read as a mistake, not an outage."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidURL("the database URL is empty; use sqlite:///path/oncely.db or "
                         "postgresql://user@host/db")
    shown = _shown(mask_url(url.strip()), 120)
    if "\x00" in url or _SURROGATE.search(url):
        raise InvalidURL(f"the database URL {shown} contains a NUL or undecodable character")
    try:
        parts = urlsplit(url.strip())
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise InvalidURL(f"malformed database URL {shown}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise InvalidURL(f"unsupported database URL scheme {scheme or '(none)'!r} in {shown}; "
                         "use sqlite:///path/oncely.db or postgresql://user@host/db")
    if scheme != "sqlite":
        _check_authority(parts, shown)
        _check_libpq_parts(parts.netloc.rpartition("@")[2], query, shown)
    return url


def _check_authority(parts: SplitResult, shown: str) -> None:
    """Refuse a URL whose authority ends before its ``@``: a password (or user name) holding an
    unencoded ``/``, ``?`` or ``#``. libpq would take the password's start for a host and a
    port, so this is said before any host or port is quoted (a "port" here is a password)."""
    if "@" in parts.netloc or ":" not in parts.netloc.rpartition("]")[2]:
        return
    if "@" in parts.path + parts.query + parts.fragment:
        raise InvalidURL(f"the database URL {shown} has an '@' after its host: percent-encode "
                         "'/', '?', '#' and '@' in the user name and password (%2F, %3F, %23, "
                         "%40)")


def _check_libpq_parts(hostports: str, query: list[tuple[str, str]], shown: str) -> None:
    ports = [value for key, value in query if key == "port"]
    for hostport in hostports.split(","):  # libpq takes host1:port1,host2:port2
        host, sep, port = hostport.rpartition(":")
        if sep and not host.endswith("]") and host.count(":"):  # a bare IPv6 address, no port
            continue
        if sep:
            ports.append(port)
    for port in (p for value in ports for p in value.split(",")):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise InvalidURL(f"invalid port {port[:20]!r} in the database URL {shown}: use a "
                             "number from 1 to 65535")
    for key, value in query:
        choices = _LIBPQ_CHOICES.get(key)
        if choices is not None and value not in choices:
            raise InvalidURL(f"invalid {key}={value[:40]!r} in the database URL {shown}: use "
                             f"one of {', '.join(choices)}")
        if key in _LIBPQ_WHOLE_NUMBERS and not value.isdigit():
            raise InvalidURL(f"invalid {key}={value[:40]!r} in the database URL {shown}: use a "
                             "whole number")
