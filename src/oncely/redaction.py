"""What oncely hides before it shows, prints or logs a URL, a setting or a value.

One place decides what a secret looks like, so the CLI, the dashboard, error messages and the demo
report cannot disagree:

* :func:`mask_url` — a URL fit to show: the password of its userinfo (to the authority's last
  ``@``; a password holding an unencoded ``/``, ``?`` or ``#`` to the URL's last ``@``), the
  values of its secret-looking query parameters (``password``, ``sslpassword``, ``token``,
  ``api_key``, ``key`` …) and, for an ``http(s)`` URL with a path (a webhook: its path *is* the
  credential), everything after the host are replaced by ``***``. A string that does not parse as
  a URL is masked by pattern instead; it never raises.
* :func:`mask_text` — a message with every URL in it masked (as above) and every Stripe key
  (``sk_live_…``, ``rk_test_…``, ``whsec_…``) and ``Bearer`` token cut to its prefix.
* :func:`redact` — a JSON value with the values of secret-looking keys replaced.

A leaf module: it imports nothing of oncely, so every layer may use it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

REDACTED = "***"

# A key (of a JSON object, a query string or a setting) holds a secret when its lower-cased name
# contains one of these.
SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey",
                "access_key", "private_key", "authorization", "credential", "cookie", "session",
                "signature")

_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
# The password of a userinfo runs from after ``user:`` to the last ``@`` of the authority; when
# no ``@`` comes before the first ``/``, ``?`` or ``#`` (a password holding one of them, not
# percent-encoded), to the last ``@`` before the URL ends: masking too much beats echoing a
# password's first characters as a host or a port.
_USERINFO_PASSWORD = re.compile(
    r"(://[^:/?#@\s'\"<>]*:)(?:[^/?#\s'\"<>]*@|[^\s'\"<>]*@)")
_SECRET_PARAM = re.compile(r"(?i)([?&;](?:[a-z_]*(?:password|passwd|pwd|secret|token|api_?key"
                           r"|signature)|key)=)[^&#\s]*")
_STRIPE_KEY = re.compile(r"\b((?:sk|rk|pk)_(?:live|test)_|whsec_)[A-Za-z0-9]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\"]+")


def is_secret_key(name: object) -> bool:
    lowered = str(name).lower()
    return any(word in lowered for word in SECRET_WORDS)


def mask_url(url: str) -> str:
    """``url`` fit to show: passwords, secret query values and webhook paths replaced by ***."""
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc and _USERINFO_PASSWORD.match(url, len(parts.scheme)):
            # A password holding an unencoded '/', '?' or '#': urlsplit ends the authority
            # there and would show the password's start as a host or port. Mask it, then
            # read the URL that is left (its netloc now holds the '@').
            url = _USERINFO_PASSWORD.sub(_masked_userinfo, url, count=1)
            parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        port_ok = parts.port is None or parts.port >= 0  # parts.port raises on a bad port
    except ValueError:
        return _mask_by_pattern(url)
    if not port_ok or not parts.scheme:
        return _mask_by_pattern(url)
    webhook = parts.scheme.lower() in ("http", "https") and bool(parts.path.strip("/"))
    secret_query = any(_is_secret_param(key) for key, _ in query)
    if parts.password is None and not webhook and not secret_query:
        return url  # unchanged, byte for byte (urlunsplit would drop the '//' of sqlite:///x)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{REDACTED}@{hostport}"
    if webhook:
        return urlunsplit((parts.scheme, netloc, "/" + REDACTED, "", ""))
    shown = parts.query
    if secret_query:
        shown = "&".join(f"{key}={REDACTED if _is_secret_param(key) else value}"
                         for key, value in _raw_pairs(parts.query))
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{shown}" if shown else "") + (
        f"#{parts.fragment}" if parts.fragment else "")


def _is_secret_param(name: str) -> bool:
    """A query parameter holding a secret: a secret-looking name, or just ``key`` (an API key;
    as a JSON key, ``key`` is too common a name to hide)."""
    return is_secret_key(name) or name.lower() == "key"


def _masked_userinfo(found: re.Match[str]) -> str:
    return f"{found.group(1)}{REDACTED}@"


def _raw_pairs(query: str) -> list[tuple[str, str]]:
    """The query's pairs as written (not decoded), so the masked URL keeps its own spelling."""
    from urllib.parse import unquote

    pairs = []
    for piece in re.split("[&;]", query):
        key, _, value = piece.partition("=")
        pairs.append((unquote(key), value))
    return pairs


def _mask_by_pattern(text: str) -> str:
    text = _USERINFO_PASSWORD.sub(_masked_userinfo, text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


def mask_text(text: str, *secrets: str | None) -> str:
    """``text`` (a message) with its URLs masked, Stripe keys and bearer tokens cut, and each of
    ``secrets`` (the raw URL or token the message may quote) replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, mask_url(secret) if "://" in secret else REDACTED)
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    text = _mask_by_pattern(text)
    text = _STRIPE_KEY.sub(lambda m: m.group(1) + REDACTED, text)
    return _BEARER.sub(lambda m: m.group(1) + REDACTED, text)


def redact(value: Any) -> Any:
    """``value`` with the values of secret-looking keys (password, token, api_key …) hidden."""
    if isinstance(value, dict):
        return {key: REDACTED if is_secret_key(key) else redact(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value
