"""HTTP face of the billing workloads in the dashboard (the ``oncely.web`` plugin): the ingestion
gate ``GET /api/orgs/{id}/ingestion``, the figures (``/metrics/billing``, ``/api/billing/metrics``)
and the billing page ``/billing``.

:func:`ingestion_status` is framework-free (status code and JSON body); :func:`routes` wraps it
for Starlette, for the dashboard server to mount::

    from oncely_billing.web import routes
    app = Starlette(routes=[*dashboard_routes, *routes(oncely_app)])

200: ingestion allowed; 403: blocked, with a message saying why, until when and where to
upgrade; 404: no such organization (only when the job store said so: when it cannot be read the
gate fails open and answers 200 with ``"verified": false``).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import oncely
from oncely.plugins import Page
from oncely_billing.runtime import metering_of

if TYPE_CHECKING:
    from jinja2 import Environment
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

PATH = "/api/orgs/{org_id:int}/ingestion"
PAGE = "/billing"


def ingestion_status(app: oncely.App, org_id: int) -> tuple[int, dict[str, Any]]:
    answer = metering_of(app).gate.check(org_id)  # fails open; see oncely_billing.gate
    if not answer.known and answer.verified:
        return 404, {"org_id": org_id, "error": "unknown_organization", "message": answer.message}
    body: dict[str, Any] = {
        "org_id": org_id,
        "ingestion": "allowed" if answer.allowed else "blocked",
        "state": answer.state,
        "paid": answer.paid,
        "usage": answer.usage,
        "limit": answer.block_at,
        "resets_on": answer.resets_on.isoformat() if answer.resets_on else None,
        "verified": answer.verified,
    }
    if answer.allowed:
        return 200, body
    body.update(error="ingestion_blocked", message=answer.message, billing_url=answer.billing_url)
    return 403, body


def seconds(value: float) -> str:
    """``0.42 s``, ``12.3 s``, ``4m05s``, ``2h10m``."""
    value = max(0.0, float(value))
    if value < 60:
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


@cache
def _templates() -> Environment:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("oncely_billing", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["span"] = seconds
    return env


def billing_page(app: oncely.App) -> str:
    """The billing page's content: the figures, the last run of each task and the recent
    free-tier runs, as HTML (autoescaped)."""
    from oncely_billing import metrics

    env = _templates()
    figures = metrics.snapshot(app)
    history = metrics.history(app) if figures["installed"] else []
    return env.get_template("billing.html").render(figures=figures, history=history)


def routes(app: oncely.App) -> list[Route | Page]:
    """Starlette routes of the metering API: the ingestion gate and the billing figures
    (``/metrics/billing`` for Prometheus, ``/api/billing/metrics`` as JSON), and the billing
    page of the dashboard (``/billing``, in its navigation)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.responses import Response as PlainResponse
    from starlette.routing import Route

    from oncely_billing import metrics

    async def ingestion(request: Request) -> Response:
        org_id = int(request.path_params["org_id"])
        status, body = await run_in_threadpool(ingestion_status, app, org_id)
        return JSONResponse(body, status_code=status)

    registry = metrics.registry(app)

    async def prometheus(request: Request) -> Response:
        text = await run_in_threadpool(generate_latest, registry)
        return PlainResponse(text, media_type=CONTENT_TYPE_LATEST)

    async def figures(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(metrics.snapshot, app))

    return [Route(PATH, ingestion, methods=["GET"], name="metering-ingestion"),
            Route("/metrics/billing", prometheus, methods=["GET"], name="billing-metrics"),
            Route("/api/billing/metrics", figures, methods=["GET"], name="billing-figures"),
            Page(PAGE, "Billing", lambda: billing_page(app), nav="Billing")]
