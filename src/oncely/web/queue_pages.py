"""The dashboard's queue operations: the queues page (pause with a reason, resume, retry the
failed jobs of a queue or of a task) and cancelling a selection of jobs from the jobs page.

Every action goes through the App's facade with ``by`` naming the dashboard's token
(:attr:`~oncely.web.context.Dashboard.by`), is a form POST checked by the guard (session + CSRF
+ origin, see :mod:`oncely.web.auth`) and answers with a redirect, so a reload repeats nothing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.routing import Route

from oncely import readmodel
from oncely.errors import ConfigError, OncelyError
from oncely.observe.recorder import OPERATOR_ACTIONS
from oncely.validate import check_name
from oncely.web.context import Dashboard

SELECTION_LIMIT = 500  # jobs one "cancel selected" may name


def queues_page(d: Dashboard, r: Request) -> dict[str, Any]:
    actions = [e for e in readmodel.fleet_events(d.store, 200) if e["name"] in OPERATOR_ACTIONS]
    return {"title": "Queues", "queues": readmodel.queue_health(d.store, d.now()),
            "actions": actions[:20]}


def _queue(r: Request) -> str:
    return check_name("queue", r.path_params["queue"])


def pause(d: Dashboard, r: Request, form: dict[str, list[str]]) -> str:
    queue = _queue(r)
    reason = (form.get("reason") or [""])[0].strip()[:500]
    d.pause(queue, reason or None)
    return f"/queues?done=paused&queue={quote(queue)}"


def resume(d: Dashboard, r: Request, form: dict[str, list[str]]) -> str:
    queue = _queue(r)
    d.resume(queue)
    return f"/queues?done=resumed&queue={quote(queue)}"


def retry_failed(d: Dashboard, r: Request, form: dict[str, list[str]]) -> str:
    queue = (form.get("queue") or [""])[0].strip() or None
    task = (form.get("task") or [""])[0].strip() or None
    if queue is None and task is None:
        raise ConfigError("name a queue or a task whose failed jobs should run again")
    retried, conflicts = d.retry_failed(queue, task)
    return f"/queues?done=retried-failed&count={retried}&left={len(conflicts)}"


def cancel_selected(d: Dashboard, r: Request, form: dict[str, list[str]]) -> str:
    try:
        ids = sorted({int(value) for value in form.get("job", [])})
    except ValueError:
        raise ConfigError("job ids must be numbers") from None
    if not ids:
        raise ConfigError("select at least one job to cancel")
    if len(ids) > SELECTION_LIMIT:
        raise ConfigError(f"select at most {SELECTION_LIMIT} jobs at once")
    reason = (form.get("reason") or [""])[0].strip()[:500] or "cancelled from the dashboard"
    cancelled, refused = 0, 0
    for job_id in ids:
        try:
            d.cancel(job_id, reason)
            cancelled += 1
        except OncelyError:  # finished meanwhile, or gone: the others still go
            refused += 1
    return f"/jobs?done=cancelled-selected&count={cancelled}&left={refused}"


async def form_lists(request: Request) -> dict[str, list[str]]:
    body = (await request.body()).decode("utf-8", "replace")
    return parse_qs(body)


def routes(action: Any, page: Any) -> list[Route]:
    return [
        Route("/queues", page("queues.html", queues_page)),
        Route("/queues/{queue}/pause", action(pause), methods=["POST"]),
        Route("/queues/{queue}/resume", action(resume), methods=["POST"]),
        Route("/queues/retry-failed", action(retry_failed), methods=["POST"]),
        Route("/jobs/cancel", action(cancel_selected), methods=["POST"]),
    ]
