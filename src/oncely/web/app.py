"""The dashboard application: pages, ``/api/``, ``/metrics`` and static files in one Starlette app.

``create_app(app, token=None, allowed_hosts=(), auth="actions", bind=None)`` wraps an
:class:`oncely.App`; it adds the routes and pages that installed packages register under the
``oncely.web`` entry-point group, and the collectors of the ``oncely.metrics`` group to
``/metrics`` (:mod:`oncely.plugins`).
Every response carries headers that keep the pages in their own frame and origin (no inline
script, no framing, no sniffing); nothing is fetched from a CDN.

Before any route sees a request:

* its ``Host`` must be one the dashboard is served as (the loopback names, the ``bind`` address
  and each ``allowed_hosts`` entry, ports ignored: see :func:`host_names`), else 400: a page on
  another site that re-points its own name at 127.0.0.1 (DNS rebinding) sends its own name as
  the Host and is refused;
* a ``Bearer`` token is checked once, under the sign-in throttle (429 while it holds, 401 when
  wrong);
* with ``auth="reads"``, a request without a session or the bearer token gets 401 (API) or the
  sign-in page (HTML).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oncely.errors import ConfigError, NotFound, OncelyError
from oncely.observe.addons import AddonMetricsError, Broken
from oncely.observe.fleet import fleet_registry
from oncely.plugins import METRICS_GROUP, WEB_GROUP, Page, plugin_entry_points
from oncely.redaction import mask_text
from oncely.web import api, pages
from oncely.web.auth import BEARER_OK, Guard
from oncely.web.context import Dashboard, dashboard

if TYPE_CHECKING:
    from oncely.app import App

log = logging.getLogger("oncely.web")

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
OPEN_PATHS = ("/login", "/healthz", "/static/")  # reachable without a token under auth="reads"


def host_names(hosts: Sequence[str], bind: str | None = None) -> list[str]:
    """Host header values to accept: the loopback names, the ``bind`` address and ``hosts`` (the
    ``--allowed-host`` entries; IPv6 in brackets).

    A ``Host`` is matched by its name, its port ignored; so an entry's port
    (``jobs.example.com:443``, as a proxy's URL has it) is dropped rather than kept as a name no
    header could match. ``*.example.com`` matches the subdomains; ``*`` matches any Host and so
    gives up the DNS-rebinding defence (the dashboard warns once). Anything else that is not a
    host name or an address (a URL, a path, spaces, a misplaced ``*``) is refused with one line.
    """
    names = list(LOOPBACK_HOSTS)
    candidates = [_host_name(host) for host in hosts]
    if bind is not None:
        with contextlib.suppress(ConfigError):  # not a name: listening on it is refused anyway
            candidates.insert(0, _host_name(bind))
    for name in candidates:
        if name and name not in names:
            names.append(name)
    return names


_HOST_LABELS = re.compile(r"(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.)*"
                          r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.?")


def _host_name(entry: str) -> str:
    name = entry.strip().lower()
    if name in ("", "*"):
        return name
    bare = name.strip("[]")
    if name.count(":") > 1 and not name.startswith("["):  # a bare IPv6 address: no port
        return f"[{bare}]" if _ipv6(bare) else _refuse_host(entry)
    if name.startswith("["):
        address, _, port = name[1:].partition("]")
        if _ipv6(address) and (not port or _port(port.removeprefix(":"))):
            return f"[{address}]"
        return _refuse_host(entry)
    hostname, sep, port = name.partition(":")
    if (sep and not _port(port)) or len(hostname) > 253 or not _HOST_LABELS.fullmatch(hostname):
        return _refuse_host(entry)
    return hostname.rstrip(".") or _refuse_host(entry)


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _refuse_host(entry: str) -> NoReturn:
    raise ConfigError(f"--allowed-host {ascii(entry)[:80]} is not a host name: give a name or an "
                      "address as clients type it (jobs.example.com, jobs.example.com:443, "
                      "10.0.0.5, [fd00::5], *.example.com)")


class AuthMiddleware:
    """The dashboard's access check: the bearer token and, with ``auth="reads"``, the sign-in
    every read needs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        guard = dashboard(request).guard
        refused = self._refusal(request, guard)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _refusal(request: Request, guard: Guard) -> Response | None:
        given = guard.bearer(request)
        if given is not None and guard.enabled:
            wait = guard.wait(request)
            if wait > 0:
                return JSONResponse({"error": "too many wrong tokens: try again later"}, 429,
                                    headers={"retry-after": str(math.ceil(wait))})
            if not guard.check_token_of(request, given, "bearer"):
                return JSONResponse({"error": "wrong token"}, 401,
                                    headers={"www-authenticate": "Bearer"})
            request.scope[BEARER_OK] = True
        path = request.url.path
        if guard.may_read(request) or path.startswith(OPEN_PATHS):
            return None
        if path.startswith(("/api/", "/metrics")):
            return JSONResponse({"error": "this dashboard needs its token for reads too: send "
                                 "Authorization: Bearer <token>"}, 401,
                                headers={"www-authenticate": "Bearer"})
        return RedirectResponse("/login", status_code=303)


async def oncely_error(request: Request, exc: Exception) -> Response:
    """An oncely error no route handled itself (an add-on's route, a store failure): its one
    line, masked, with the status it stands for — not a 500 with a traceback in the log."""
    status = 404 if isinstance(exc, NotFound) else 400 if isinstance(exc, ConfigError) else 503
    if status == 503:
        log.warning("dashboard: %s %s failed: %s", request.method, request.url.path,
                    mask_text(str(exc)))
    return JSONResponse({"error": mask_text(str(exc))}, status_code=status)


def metrics(request: Request) -> Response:
    registry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def healthz(request: Request) -> Response:
    dashboard(request).store.schema_version()
    return PlainTextResponse("ok")


def extra_routes(app: App) -> tuple[list[BaseRoute], list[tuple[str, str]]]:
    """Routes that installed packages add under the ``oncely.web`` entry-point group, and the
    navigation links of the :class:`~oncely.plugins.Page` objects among them."""
    found: list[BaseRoute] = []
    nav: list[tuple[str, str]] = []
    for name, entry in plugin_entry_points(WEB_GROUP).items():
        try:
            added = list(entry.load()(app))
        except ImportError as exc:
            log.debug("routes of %s not mounted: %s", name, exc)
            continue
        except Exception:  # a broken add-on must not take the dashboard down
            log.exception("routes of %s (%s) failed; not mounted", name, entry.value)
            continue
        for item in added:
            if isinstance(item, Page):
                found.append(Route(item.path, pages.addon_page(item), methods=["GET"],
                                   name=f"{name}:{item.path}"))
                if item.nav:
                    nav.append((item.path, item.nav))
            else:
                found.append(item)
    return found, nav


def addon_collectors(app: App) -> dict[str, Collector]:
    """The collectors that installed packages add under the ``oncely.metrics`` entry-point group
    (one that cannot be built is served as a failing one: counted, logged at the first scrape)."""
    found: dict[str, Collector] = {}
    for name, entry in plugin_entry_points(METRICS_GROUP).items():
        try:
            collector = entry.load()(app)
        except ImportError as exc:
            log.debug("metrics of %s not served: %s", name, exc)
            continue
        except Exception as exc:
            collector = Broken(exc)
        if not callable(getattr(collector, "collect", None)):
            collector = Broken(AddonMetricsError(f"{entry.value} gave no collector"))
        found[name] = collector
    return found


def create_app(app: App, token: str | None = None, allowed_hosts: Sequence[str] = (),
               auth: str = "actions", bind: str | None = None) -> Starlette:
    dash = Dashboard(app, token, auth)
    routes: list[BaseRoute] = [
        *pages.routes(),
        *api.routes(),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(packages=[("oncely.web", "static")]), name="static"),
    ]
    added, dash.nav = extra_routes(app)
    web = Starlette(routes=[*routes, *added], exception_handlers={OncelyError: oncely_error})
    web.state.dashboard = dash
    web.state.metrics_registry = fleet_registry(lambda: app.store, app.clock.now,
                                                dash.stale_after, addon_collectors(app))
    web.add_middleware(AuthMiddleware)
    served_as = host_names(allowed_hosts, bind)
    if "*" in served_as:
        log.warning("--allowed-host '*': any Host header is answered, so a web page that "
                    "re-points its name at this address (DNS rebinding) can read the dashboard; "
                    "list the names clients use instead")
    web.add_middleware(TrustedHostMiddleware, allowed_hosts=served_as, www_redirect=False)
    web.add_middleware(SecurityHeaders)  # the last added is the outermost: every answer has them
    return web
