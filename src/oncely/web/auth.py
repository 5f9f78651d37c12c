"""Who may change things through the dashboard.

Without a token the dashboard is read-only: every action answers 403. With a token:

* a browser signs in by posting the token to ``/login``; it gets a session cookie (random id plus
  an HMAC under a key derived from the token and a per-process secret; ``HttpOnly``,
  ``SameSite=Strict``), never the token itself;
* every action is a form POST carrying a CSRF token (an HMAC of the session id), checked together
  with the session and, when the browser sends one, the ``Origin`` header;
* API clients send ``Authorization: Bearer <token>`` instead (no cookie, so no CSRF exposure).

The token is compared in constant time (a failed sign-in answers after a pause) and is never
rendered, logged or put in a URL. Signing out revokes the session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

SESSION_COOKIE = "oncely_session"


class Guard:
    def __init__(self, token: str | None) -> None:
        self.token = token or None
        secret = secrets.token_bytes(32)
        self._key = hashlib.sha256(b"oncely-dashboard\0" + secret + (token or "").encode()).digest()
        self._revoked: set[str] = set()  # sessions signed out in this process

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str | None) -> bool:
        if self.token is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def new_session(self) -> str:
        session_id = secrets.token_urlsafe(18)
        return f"{session_id}.{self._sign('session:' + session_id)}"

    def session_id(self, request: Request) -> str | None:
        """The id of a valid session cookie on ``request``, else None."""
        if not self.enabled:
            return None
        value = request.cookies.get(SESSION_COOKIE, "")
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
        return (expected is not None and csrf is not None
                and hmac.compare_digest(expected, csrf) and self.same_origin(request))

    def bearer_allowed(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())
