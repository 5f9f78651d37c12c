"""The dashboard's HTML pages (server-rendered Jinja2) and its form actions.

Reads go through :mod:`oncely.readmodel`; the store calls run in Starlette's thread pool so a slow
query never blocks the event loop. Actions (retry, cancel, resolve) are POSTs checked by
:class:`~oncely.web.auth.Guard` and answered with a redirect back to the page (303), so a reload
never repeats them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from oncely import readmodel
from oncely.errors import ConfigError, NotFound, OncelyError
from oncely.observe.fmt import ratio, span
from oncely.plugins import Page
from oncely.redaction import mask_text
from oncely.types import JobState
from oncely.web import queue_pages, schedule_pages
from oncely.web.api import job_filter, path_id
from oncely.web.auth import SESSION_COOKIE
from oncely.web.context import Dashboard, dashboard
from oncely.web.schedule_pages import FormRefused

ENV = Environment(loader=PackageLoader("oncely.web", "templates"),
                  autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
ENV.filters["span"] = span
ENV.filters["ratio"] = ratio

DONE = {"retried": "Job requeued: it runs again as soon as a worker is free.",
        "cancelled": "Cancellation recorded.", "resolved": "Anomaly resolved.",
        "signed-in": "Signed in: actions are enabled.", "signed-out": "Signed out.",
        "schedule-pause": "Schedule paused: its slots are recorded paused until resumed.",
        "schedule-resume": "Schedule resumed (its catch-up policy ran the paused slots it keeps).",
        "schedule-trigger": "Current slot triggered (once for the fleet).",
        "schedule-trigger-none": "Nothing enqueued: the current slot already has a job or ran, "
                                 "or the schedule is disabled.",
        "schedule-deleted": "Schedule deleted.",
        "schedule-created": "Schedule created (dynamic): workers that have its task fire it.",
        "schedule-updated": "Schedule saved: its definition in force is the one shown.",
        "schedule-backfill": "Backfill enqueued:",
        "paused": "Queue paused: no job of it starts on any worker; running jobs finish.",
        "resumed": "Queue resumed.", "retried-failed": "Failed jobs requeued.",
        "cancelled-selected": "Cancellation recorded for the selected jobs."}


def _done(request: Request) -> str | None:
    """The flash after an action, with how many jobs it touched when it says so."""
    text = DONE.get(request.query_params.get("done", ""))
    count, left = request.query_params.get("count"), request.query_params.get("left")
    if text and count is not None and count.isdigit():
        text = f"{text} {count} job(s)"
        if left and left.isdigit() and left != "0":
            text += f"; {left} left as they were"
    return text


def _ago(value: str | None, now: datetime) -> str:
    if not value:
        return "-"
    seconds = (now - datetime.fromisoformat(value)).total_seconds()
    return f"in {span(-seconds)}" if seconds < 0 else f"{span(seconds)} ago"


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    dash = dashboard(request)
    now = dash.now()
    csrf = dash.guard.csrf_token(request)
    page = ENV.get_template(template).render(
        request=request, now=now, ago=lambda value: _ago(value, now),
        guard_enabled=dash.guard.enabled, can_act=csrf is not None, csrf=csrf,
        store_label=f"{dash.store.dialect}: {readmodel.mask_url(dash.store.url)}",
        version=dash.version, done=_done(request), addon_nav=dash.nav,
        path=request.url.path, **context,
    )
    return HTMLResponse(page, status_code=status)


def page(template: str, build: Callable[[Dashboard, Request], dict[str, Any]]) -> Any:
    async def endpoint(request: Request) -> Response:
        dash = dashboard(request)
        try:
            context = await run_in_threadpool(build, dash, request)
        except NotFound as exc:
            return render(request, "error.html", 404, title="Not found",
                          message=mask_text(str(exc)))
        except ConfigError as exc:
            return render(request, "error.html", 400, title="Bad request",
                          message=mask_text(str(exc)))
        return render(request, template, **context)

    return endpoint


def addon_page(added: Page) -> Any:
    """The endpoint of an add-on's page: its body (HTML it escaped) in the dashboard's layout."""
    return page("addon.html", lambda d, r: {"title": added.title, "body": Markup(added.body())})


def _overview(d: Dashboard, r: Request) -> dict[str, Any]:
    now = d.now()
    fleet = readmodel.fleet(d.store, now, d.stale_after)
    alerts = []
    if not fleet["workers_alive"]:
        alerts.append("No live worker: nothing runs. Start one with `oncely worker`.")
    elif fleet["leader"] is None:
        alerts.append("No leader: the rescuer, pruner and watchdog are not running.")
    if fleet["lease_takeovers_1h"]:
        alerts.append(f"{fleet['lease_takeovers_1h']} lease takeover(s) in the last hour.")
    if fleet["fence_rejections_1h"]:
        alerts.append(f"{fleet['fence_rejections_1h']} write(s) refused by fencing in the last "
                      "hour.")
    return {"title": "Overview", "fleet": fleet, "alerts": alerts,
            "anomalies": readmodel.anomalies(d.store, True, 20),
            "rates": readmodel.schedule_rates(d.store, now)}


def _jobs(d: Dashboard, r: Request) -> dict[str, Any]:
    flt = job_filter(r)
    rows = readmodel.list_jobs(d.store, flt)
    skip = ("before", "done", "count", "left")
    params = {k: v for k, v in r.query_params.items() if v and k not in skip}
    more = None
    if len(rows) == flt.limit and rows:
        more = "&".join(f"{k}={quote(v)}" for k, v in {**params,
                                                        "before": str(rows[-1]["id"])}.items())
    queues = [q["queue"] for q in readmodel.queue_overview(d.store)]
    return {"title": "Jobs", "jobs": rows, "filters": params, "more": more, "queues": queues,
            "states": [s.value for s in JobState]}


def _job(d: Dashboard, r: Request) -> dict[str, Any]:
    job_id = path_id(r)
    detail = readmodel.redact_job(readmodel.job_detail(d.store, job_id))
    state = detail["state"]
    return {"title": f"Job {job_id}", "job": detail,
            "attempts": readmodel.job_attempts(d.store, job_id),
            "can_retry": state in ("failed", "cancelled", "retryable", "scheduled"),
            "can_cancel": state in ("scheduled", "available", "retryable", "running")}


def _workers(d: Dashboard, r: Request) -> dict[str, Any]:
    now = d.now()
    rows = readmodel.workers(d.store)
    for row in rows:
        seen = datetime.fromisoformat(row["last_seen_at"])
        row["alive"] = (now - seen).total_seconds() <= d.stale_after
    leases = readmodel.leases(d.store)
    for lease in leases:
        expires = lease["expires_at"]
        held = lease["owner"] is not None and expires is not None
        lease["status"] = ("free" if not held else
                           "held" if datetime.fromisoformat(expires) > now else "expired")
    return {"title": "Workers and leases", "workers": rows, "leases": leases,
            "events": readmodel.fleet_events(d.store, 20)}


def _anomalies(d: Dashboard, r: Request) -> dict[str, Any]:
    every = readmodel.anomalies(d.store, open_only=False, limit=200)
    return {"title": "Anomalies", "open": [a for a in every if a["resolved_at"] is None],
            "resolved": [a for a in every if a["resolved_at"] is not None][:50]}


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return {key: values[0] for key, values in parse_qs(body).items()}


def action(do: Callable[..., str]) -> Any:
    """A guarded form POST running ``do(dashboard, request)``, or ``do(dashboard, request,
    form)`` (every value of every field) when ``do`` takes the form; answered with a redirect to
    the URL ``do`` returns, or with its page again when it raises
    :class:`~oncely.web.schedule_pages.FormRefused`."""
    wants_form = len(inspect.signature(do).parameters) == 3

    async def endpoint(request: Request) -> Response:
        dash = dashboard(request)
        fields = await queue_pages.form_lists(request)
        form = {key: values[0] for key, values in fields.items()}
        if not dash.guard.form_allowed(request, form.get("csrf")):
            message = ("This dashboard is read-only: start it with --token to enable actions."
                       if not dash.guard.enabled else
                       "Sign in first (your session or form expired, or the request came from "
                       "another site).")
            return render(request, "error.html", 403, title="Not allowed", message=message)
        try:
            args = (dash, request, fields) if wants_form else (dash, request)
            target = await run_in_threadpool(do, *args)
        except FormRefused as refused:
            return render(request, refused.template, refused.status, **refused.context)
        except NotFound as exc:
            return render(request, "error.html", 404, title="Not found",
                          message=mask_text(str(exc)))
        except OncelyError as exc:
            return render(request, "error.html", 409, title="Not done",
                          message=mask_text(str(exc)))
        return RedirectResponse(target, status_code=303)

    return endpoint


def _retry(d: Dashboard, r: Request) -> str:
    job = d.retry(path_id(r))
    return f"/jobs/{job['id']}?done=retried"


def _cancel(d: Dashboard, r: Request) -> str:
    job = d.cancel(path_id(r), "cancelled from the dashboard")
    return f"/jobs/{job['id']}?done=cancelled"


def _resolve(d: Dashboard, r: Request) -> str:
    d.app.resolve_anomaly(path_id(r, "anomaly_id", "anomaly"), by=d.by)
    return "/anomalies?done=resolved"


async def login(request: Request) -> Response:
    dash = dashboard(request)
    if request.method == "GET":
        return render(request, "login.html", title="Sign in", failed=False, wait=0)
    form = await _form(request)
    guard = dash.guard
    if not guard.enabled:  # no token to guess: nothing is compared, logged or throttled
        return render(request, "login.html", 403, title="Sign in", failed=False, wait=0)
    wait = guard.wait(request)
    if wait > 0:  # the token is not even compared: guessing waits for the buckets to refill
        refused = render(request, "login.html", 429, title="Sign in", failed=True,
                         wait=math.ceil(wait))
        refused.headers["retry-after"] = str(math.ceil(wait))
        return refused
    if not guard.same_origin(request) or not guard.check_token_of(request, form.get("token"),
                                                                  "sign-in form"):
        return render(request, "login.html", 403, title="Sign in", failed=True, wait=0)
    response = RedirectResponse("/?done=signed-in", status_code=303)
    response.set_cookie(SESSION_COOKIE, dash.guard.new_session(), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


async def logout(request: Request) -> Response:
    form = await _form(request)
    guard = dashboard(request).guard
    if not guard.form_allowed(request, form.get("csrf")):
        return render(request, "error.html", 403, title="Not allowed", message="Not signed in.")
    guard.revoke(request)
    response = RedirectResponse("/?done=signed-out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def routes() -> list[Route]:
    return [
        Route("/", page("overview.html", _overview)),
        *queue_pages.routes(action, page),
        Route("/jobs", page("jobs.html", _jobs)),
        Route("/jobs/{job_id:int}", page("job.html", _job)),
        Route("/jobs/{job_id:int}/retry", action(_retry), methods=["POST"]),
        Route("/jobs/{job_id:int}/cancel", action(_cancel), methods=["POST"]),
        *schedule_pages.routes(action, page),
        Route("/workers", page("workers.html", _workers)),
        Route("/anomalies", page("anomalies.html", _anomalies)),
        Route("/anomalies/{anomaly_id:int}/resolve", action(_resolve), methods=["POST"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
