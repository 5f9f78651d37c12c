"""The dashboard application: pages, ``/api/``, ``/metrics`` and static files in one Starlette app.

``create_app(app, token=None)`` wraps an :class:`oncely.App`; it adds the routes that installed
packages register under the ``oncely.web`` entry-point group. Every response carries
headers that keep the pages in their own frame and origin (no inline script, no framing, no
sniffing); nothing is fetched from a CDN.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oncely.observe.fleet import fleet_registry
from oncely.plugins import WEB_GROUP, plugin_entry_points
from oncely.web import api, pages
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


def metrics(request: Request) -> Response:
    registry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def healthz(request: Request) -> Response:
    dashboard(request).store.schema_version()
    return PlainTextResponse("ok")


def extra_routes(app: App) -> list[BaseRoute]:
    """Routes that installed packages add under the ``oncely.web`` entry-point group."""
    found: list[BaseRoute] = []
    for name, entry in plugin_entry_points(WEB_GROUP).items():
        try:
            found.extend(entry.load()(app))
        except ImportError as exc:
            log.debug("routes of %s not mounted: %s", name, exc)
        except Exception:  # a broken add-on must not take the dashboard down
            log.exception("routes of %s (%s) failed; not mounted", name, entry.value)
    return found


def create_app(app: App, token: str | None = None) -> Starlette:
    dash = Dashboard(app, token)
    routes: list[BaseRoute] = [
        *pages.routes(),
        *api.routes(),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(packages=[("oncely.web", "static")]), name="static"),
        *extra_routes(app),
    ]
    web = Starlette(routes=routes)
    web.state.dashboard = dash
    web.state.metrics_registry = fleet_registry(lambda: app.store, app.clock.now,
                                                dash.stale_after)
    web.add_middleware(SecurityHeaders)
    return web
