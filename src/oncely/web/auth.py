"""Who may read and change things through the dashboard.

Without a token the dashboard is read-only: every action answers 403. With a token (at least
:data:`TOKEN_MIN` characters):

* a browser signs in by posting the token to ``/login``; it gets a session cookie (random id plus
  an HMAC under a key derived from the token and a per-process secret; ``HttpOnly``,
  ``SameSite=Strict``), never the token itself;
* every action is a form POST carrying a CSRF token (an HMAC of the session id), checked together
  with the session and, when the browser sends one, the ``Origin`` header;
* API clients send ``Authorization: Bearer <token>`` instead (no cookie, so no CSRF exposure).

With ``auth="reads"`` every page and API read needs the same sign-in (or bearer token); only
``/login``, ``/healthz`` and the static files stay open.

The token is compared in constant time, never rendered, logged or put in a URL; wrong tokens are
rate-limited per client and overall (:mod:`oncely.web.throttle`) and each is logged once.
Signing out revokes the session. Cookies and form fields are only ever compared as ASCII: any
other value is simply not a session.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

from oncely.errors import ConfigError
from oncely.web.throttle import Throttle

SESSION_COOKIE = "oncely_session"
BEARER_OK = "oncely.bearer_ok"  # set in the request scope once its bearer token was verified
TOKEN_MIN = 16
TOKEN_MAX = 1024  # a longer "token" is not one of ours: refused before comparing
AUTH_MODES = ("actions", "reads")

log = logging.getLogger("oncely.web")


def check_token(token: str | None) -> str | None:
    if token is None:
        return None
    if not TOKEN_MIN <= len(token) <= TOKEN_MAX or not token.isascii() \
            or not token.isprintable() or " " in token:
        raise ConfigError(f"the dashboard token must be {TOKEN_MIN}-{TOKEN_MAX} printable ASCII "
                          "characters without spaces (try: python -c 'import secrets; "
                          "print(secrets.token_urlsafe(24))')")
    return token


class Guard:
    def __init__(self, token: str | None, auth: str = "actions",
                 throttle: Throttle | None = None) -> None:
        if auth not in AUTH_MODES:
            raise ConfigError(f"--auth must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
        if auth == "reads" and not token:
            raise ConfigError("--auth reads needs a token: set ONCELY_DASHBOARD_TOKEN")
        self.token = check_token(token or None)
        self.reads_need_token = auth == "reads"
        self.throttle = throttle or Throttle()
        secret = secrets.token_bytes(32)
        self._key = hashlib.sha256(b"oncely-dashboard\0" + secret + (token or "").encode()).digest()
        self._revoked: set[str] = set()  # sessions signed out in this process

    @property
    def token_id(self) -> str:
        """Names the token in events: the first 8 hex digits of its SHA-256."""
        if self.token is None:
            return "none"
        return hashlib.sha256(self.token.encode()).hexdigest()[:8]

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str | None) -> bool:
        if self.token is None or not given or len(given) > TOKEN_MAX:
            return False
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())

    def wait(self, request: Request) -> float:
        """Seconds before a token from this client is heard (0: now)."""
        return self.throttle.wait(client_of(request))

    def check_token_of(self, request: Request, given: str | None, how: str) -> bool:
        """Whether ``given`` is the token; a wrong one is logged once and spends the client's
        and everyone's attempts. Call :meth:`wait` first (no await in between)."""
        if self.token_matches(given):
            return True
        client = client_of(request)
        self.throttle.failed(client)
        log.warning("dashboard: wrong token from %s (%s)", client, how)
        return False

    def new_session(self) -> str:
        session_id = secrets.token_urlsafe(18)
        return f"{session_id}.{self._sign('session:' + session_id)}"

    def session_id(self, request: Request) -> str | None:
        """The id of a valid session cookie on ``request``, else None."""
        if not self.enabled:
            return None
        value = request.cookies.get(SESSION_COOKIE, "")
        if not value.isascii():
            return None
        session_id, _, signature = value.partition(".")
        expected = self._sign("session:" + session_id)
        if not session_id or not hmac.compare_digest(signature, expected):
            return None
        return None if session_id in self._revoked else session_id

    def revoke(self, request: Request) -> None:
        session_id = self.session_id(request)
        if session_id is not None:
            self._revoked.add(session_id)

    def csrf_token(self, request: Request) -> str | None:
        session_id = self.session_id(request)
        return None if session_id is None else self._sign("csrf:" + session_id)

    def same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.headers.get("host", "")

    def form_allowed(self, request: Request, csrf: str | None) -> bool:
        """A form POST may act: signed-in session, matching CSRF token, same origin."""
        expected = self.csrf_token(request)
        return (expected is not None and csrf is not None and csrf.isascii()
                and hmac.compare_digest(expected, csrf) and self.same_origin(request))

    def bearer(self, request: Request) -> str | None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return given.strip() if scheme.lower() == "bearer" else None

    def bearer_allowed(self, request: Request) -> bool:
        """The request's bearer token was verified (by the dashboard's gate, throttled)."""
        return self.enabled and bool(request.scope.get(BEARER_OK))

    def may_read(self, request: Request) -> bool:
        if not self.reads_need_token:
            return True
        return self.bearer_allowed(request) or self.session_id(request) is not None


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"
