"""The JSON API under ``/api/``: the read model as JSON, plus job retry and cancel.

Every endpoint is declared once in :data:`ENDPOINTS`; the routes and the OpenAPI 3.1 document at
``/api/openapi.json`` are both built from that list, so they cannot drift apart. Actions need
``Authorization: Bearer <token>`` (the dashboard's token); reads need it only when the dashboard
runs with ``--auth reads``. Path ids and names, and filters, are validated here: a bad one is a
400 (or a 404 for an id or name no store can hold), never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oncely import readmodel
from oncely.errors import ConfigError, NotFound
from oncely.redaction import mask_text
from oncely.store.base import JobFilter
from oncely.types import JobState
from oncely.validate import ID_MAX, check_name
from oncely.web.context import Dashboard, dashboard

Handler = Callable[[Dashboard, Request], Any]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Handler
    query: tuple[str, ...] = ()
    action: bool = False
    tags: tuple[str, ...] = field(default=("read",))


def _int(request: Request, name: str, default: int, high: int = 10_000) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        if not raw.isascii() or len(raw) > 20:
            raise ValueError(raw)
        return max(1, min(int(raw), high))
    except ValueError:
        raise ConfigError(f"query parameter {name} must be an integer") from None


def path_id(request: Request, name: str = "job_id", what: str = "job") -> int:
    """The id in the path; one no store can hold (beyond 64 bits) is simply not found."""
    value = int(request.path_params[name])
    if not 1 <= value <= ID_MAX:
        raise NotFound(f"{what} {value} does not exist")
    return value


def path_name(request: Request, kind: str = "schedule") -> str:
    """The name in the path; one no store can hold is simply not found."""
    name = str(request.path_params["name"])
    try:
        return check_name(kind, name)
    except ConfigError:
        raise NotFound(f"{kind} {ascii(name)[:80]} does not exist") from None


def _name_param(request: Request, kind: str) -> str | None:
    value = request.query_params.get(kind) or None
    return None if value is None else check_name(kind, value)


def job_filter(request: Request, limit: int = 50) -> JobFilter:
    params = request.query_params
    state = params.get("state") or None
    if state is not None and state not in {s.value for s in JobState}:
        raise ConfigError(f"unknown state {ascii(state)[:40]}; use one of "
                          f"{', '.join(s for s in JobState)}")
    before = params.get("before") or None
    if before is not None and not (before.isascii() and before.isdigit()
                                   and 1 <= int(before) <= ID_MAX):
        raise ConfigError(f"query parameter before must be a job id (1 to {ID_MAX})")
    return JobFilter(
        state=JobState(state) if state else None, queue=_name_param(request, "queue"),
        task=_name_param(request, "task"), schedule=_name_param(request, "schedule"),
        limit=_int(request, "limit", limit, 1000),
        before_id=None if before is None else int(before),
    )


def _overview(d: Dashboard, r: Request) -> Any:
    return readmodel.fleet(d.store, d.now(), d.stale_after)


def _jobs(d: Dashboard, r: Request) -> Any:
    return readmodel.list_jobs(d.store, job_filter(r))


def _job(d: Dashboard, r: Request) -> Any:
    job_id = path_id(r)
    return readmodel.redact_job(readmodel.job_detail(d.store, job_id)) | {
        "attempts": readmodel.job_attempts(d.store, job_id)}


def _retry(d: Dashboard, r: Request) -> Any:
    return d.retry(path_id(r))


def _cancel(d: Dashboard, r: Request) -> Any:
    return d.cancel(path_id(r), "cancelled through the dashboard API")


def _schedule(d: Dashboard, r: Request) -> Any:
    return readmodel.schedule_detail(d.store, path_name(r), d.now(), d.stale_after,
                                    d.app.tasks)


def _body(r: Request) -> dict[str, Any]:
    body = getattr(r.state, "body", None)
    return body if isinstance(body, dict) else {}


def _schedule_action(action: str) -> Handler:
    def handle(d: Dashboard, r: Request) -> Any:
        return d.schedule_action(path_name(r), action, _body(r))

    return handle


def _timeline(d: Dashboard, r: Request) -> Any:
    return readmodel.schedule_timeline(d.store, path_name(r), d.now(),
                                       _int(r, "buckets", 24, 200))


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/api/overview", "Fleet summary: queues, workers, leader, warning signs",
             _overview),
    Endpoint("GET", "/api/queues", "Jobs per queue and state, due jobs, oldest wait, rate",
             lambda d, r: readmodel.queue_health(d.store, d.now())),
    Endpoint("GET", "/api/jobs", "Jobs, newest first", _jobs,
             query=("state", "queue", "task", "schedule", "limit", "before")),
    Endpoint("GET", "/api/jobs/{job_id}", "One job with its errors and attempts", _job),
    Endpoint("POST", "/api/jobs/{job_id}/retry", "Run a finished or waiting job again now",
             _retry, action=True, tags=("action",)),
    Endpoint("POST", "/api/jobs/{job_id}/cancel", "Cancel a waiting job or stop a running one",
             _cancel, action=True, tags=("action",)),
    Endpoint("GET", "/api/schedules", "Schedules with last and next slot",
             lambda d, r: readmodel.schedules_overview(d.store, d.now(), d.stale_after,
                                                       d.app.tasks)),
    Endpoint("GET", "/api/schedules/rates", "Executions per schedule against expected (1 h)",
             lambda d, r: readmodel.schedule_rates(d.store, d.now())),
    Endpoint("GET", "/api/schedules/{name}", "One schedule: definition, rates, ledger",
             _schedule),
    Endpoint("GET", "/api/schedules/{name}/timeline", "Expected vs actual executions per bucket",
             _timeline, query=("buckets",)),
    Endpoint("GET", "/api/schedules/{name}/history", "What deploys and operators did to it",
             lambda d, r: readmodel.schedule_history(d.store, path_name(r),
                                                     _int(r, "limit", 50, 1000)),
             query=("limit",)),
    Endpoint("POST", "/api/schedules", "Create a dynamic schedule: JSON {name, task, cron or "
             "every, args, tz, overlap, catch_up, ...}",
             lambda d, r: d.schedule_define(_body(r)), action=True, tags=("action",)),
    Endpoint("PATCH", "/api/schedules/{name}", "Update a dynamic schedule (a new revision)",
             lambda d, r: d.schedule_define(_body(r), path_name(r)),
             action=True, tags=("action",)),
    Endpoint("DELETE", "/api/schedules/{name}", "Delete a schedule (JSON {force} optional)",
             _schedule_action("delete"), action=True, tags=("action",)),
    *(Endpoint("POST", f"/api/schedules/{{name}}/{verb}", summary, _schedule_action(verb),
               action=True, tags=("action",))
      for verb, summary in (
          ("pause", "Pause a schedule: its slots are recorded paused (JSON {reason} optional)"),
          ("resume", "Resume a schedule; its catch-up policy runs paused slots"),
          ("trigger", "Run the current slot now, once for the fleet"),
          ("backfill", "One job per slot in (from, to]: JSON {from, to, yes}"))),
    Endpoint("GET", "/api/workers", "Registered workers",
             lambda d, r: readmodel.workers(d.store)),
    Endpoint("GET", "/api/leases", "Singleton and leader leases with their fences",
             lambda d, r: readmodel.leases(d.store)),
    Endpoint("GET", "/api/anomalies", "Anomalies raised by the watchdog (open by default)",
             lambda d, r: readmodel.anomalies(d.store, r.query_params.get("all") is None,
                                              _int(r, "limit", 100, 1000)),
             query=("all", "limit")),
    Endpoint("GET", "/api/events", "Fleet events: lease takeovers, fence rejections",
             lambda d, r: readmodel.fleet_events(d.store, _int(r, "limit", 50, 1000)),
             query=("limit",)),
    Endpoint("GET", "/api/doctor", "The doctor's findings (what `oncely doctor` prints)",
             lambda d, r: d.app.doctor().to_dict()),
)


def _route(endpoint: Endpoint) -> Route:
    async def handle(request: Request) -> Response:
        dash = dashboard(request)
        if endpoint.action and not dash.guard.bearer_allowed(request):
            reason = ("read-only dashboard: start it with --token to allow actions"
                      if not dash.guard.enabled else "send Authorization: Bearer <token>")
            return JSONResponse({"error": reason}, status_code=403)
        if endpoint.action and endpoint.method != "GET":
            raw = await request.body()
            try:
                request.state.body = json.loads(raw) if raw.strip() else {}
            except (ValueError, RecursionError):  # not JSON, or nested beyond the parser
                return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        try:
            body = await run_in_threadpool(endpoint.handler, dash, request)
        except NotFound as exc:
            return JSONResponse({"error": mask_text(str(exc))}, status_code=404)
        except (ConfigError, TypeError) as exc:
            return JSONResponse({"error": mask_text(str(exc))}, status_code=400)
        return JSONResponse(body)

    path = endpoint.path.replace("{job_id}", "{job_id:int}")
    return Route(path, handle, methods=[endpoint.method])


def openapi(request: Request) -> JSONResponse:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "integer" if name == "job_id" else "string"}}
                      for name in ("job_id", "name") if "{" + name + "}" in endpoint.path]
        parameters += [{"name": name, "in": "query", "required": False,
                        "schema": {"type": "string"}} for name in endpoint.query]
        operation: dict[str, Any] = {
            "summary": endpoint.summary, "tags": list(endpoint.tags), "parameters": parameters,
            "responses": {"200": {"description": "JSON", "content": {"application/json": {}}},
                          "404": {"description": "not found"}},
        }
        if endpoint.action:
            operation["security"] = [{"bearer": []}]
            operation["responses"]["403"] = {"description": "no token sent, or read-only"}
        operation["responses"].update({
            "400": {"description": "a malformed parameter"},
            "401": {"description": "wrong token (or none, with --auth reads)"},
            "429": {"description": "too many wrong tokens: wait Retry-After seconds"}})
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return JSONResponse({
        "openapi": "3.1.0",
        "info": {"title": "oncely dashboard API", "version": dashboard(request).version},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })


def routes() -> list[Route]:
    # /api/schedules/rates must be matched before /api/schedules/{name}
    return [Route("/api/openapi.json", openapi), *(_route(e) for e in ENDPOINTS)]
