"""The dashboard's schedule pages: the list with a form that creates a dynamic schedule, and one
schedule's page with its buttons (trigger, pause with a reason, resume, backfill, delete) and,
for a dynamic schedule, the form that edits it.

The form has the fields of ``oncely schedules create`` and of ``POST /api/schedules`` and goes
through the same facade (:mod:`oncely.schedule_actions`), so it refuses what they refuse — an
unknown task, a bad cron or time zone, args the task does not take, a name a declared schedule
holds. A refused form comes back with the user's input and the reason above it (400), never a
half-stored schedule. Every action is a form POST checked by the guard like the others (session
+ CSRF + origin) and recorded with the dashboard's token as ``by``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.routing import Route

from oncely import readmodel
from oncely.errors import ConfigError
from oncely.redaction import REDACTED, mask_text
from oncely.schedule_actions import BACKFILL_CAP, args_from_json
from oncely.web.api import path_name
from oncely.web.charts import timeline_svg
from oncely.web.context import Dashboard

BUTTONS = ("pause", "resume", "trigger", "delete")
TEXT_LIMIT = 10_000  # characters of one form field
DEFAULTS = {"name": "", "task": "", "cron": "", "every": "", "tz": "UTC", "args": "{}",
            "overlap": "skip", "catch_up": "latest", "catch_up_limit": "100",
            "misfire_grace": "", "queue": "", "priority": "0", "jitter": "0", "enabled": True}


class FormRefused(Exception):
    """A form the facade refused: the page is rendered again (``status``) with the user's input
    in ``context["form"]`` and the reason in ``context["form_error"]``."""

    def __init__(self, template: str, status: int, context: dict[str, Any]) -> None:
        super().__init__(context.get("form_error"))
        self.template, self.status, self.context = template, status, context


def _tasks(d: Dashboard) -> list[str]:
    return sorted(d.app.tasks)


def schedules_page(d: Dashboard, r: Request) -> dict[str, Any]:
    now = d.now()
    rates = {row["schedule"]: row for row in readmodel.schedule_rates(d.store, now)}
    return {"title": "Schedules",
            "schedules": readmodel.schedules_overview(d.store, now, d.stale_after, d.app.tasks),
            "rates": rates, "tasks": _tasks(d), "form": dict(DEFAULTS), "form_error": None}


def schedule_page(d: Dashboard, r: Request) -> dict[str, Any]:
    name = path_name(r)
    now = d.now()
    detail = readmodel.schedule_detail(d.store, name, now, d.stale_after, d.app.tasks)
    timeline = readmodel.schedule_timeline(d.store, name, now)
    chart = timeline_svg(timeline) if timeline["buckets"] else None  # none for an invalid one
    return {"title": f"Schedule {name}", "schedule": detail, "timeline": timeline,
            "chart": chart, "tasks": _tasks(d), "backfill_cap": BACKFILL_CAP,
            "form": form_of(detail["spec"]), "form_error": None}


def _number(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def form_of(stored: Any) -> dict[str, Any]:
    """The edit form's fields from a stored definition (its args as the page shows them:
    secret-looking values masked); a stored row that is not a valid definition still fills
    the form, so it can be corrected."""
    spec: Mapping[str, Any] = stored if isinstance(stored, Mapping) else {}
    return {"name": spec.get("name", ""), "task": spec.get("task", ""),
            "cron": spec.get("cron") or "",
            "every": _number(spec.get("every")), "tz": spec.get("tz") or "UTC",
            "args": json.dumps(spec.get("args") or {}, sort_keys=True),
            "overlap": spec.get("overlap") or "skip", "catch_up": spec.get("catch_up") or "latest",
            "catch_up_limit": str(spec.get("catch_up_limit", 100)),
            "misfire_grace": _number(spec.get("misfire_grace")), "queue": spec.get("queue") or "",
            "priority": str(spec.get("priority") or 0), "jitter": _number(spec.get("jitter", 0)),
            "enabled": bool(spec.get("enabled", True))}


def _parse_number(label: str, text: str, integer: bool = False) -> float | int:
    try:
        if not text.isascii() or len(text) > 30:
            raise ValueError(text)
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number of seconds"
        raise ConfigError(f"{label} must be {kind}, got {ascii(text)[:40]}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{label} must be a finite number, got {text!r}")
    return value


def definition(form: Mapping[str, Any]) -> dict[str, Any]:
    """The form's fields as the facade's keyword arguments (``name`` and ``task`` included);
    the checks of text → types here, the rest (cron, time zone, policies, args against the
    task) in the facade, as for the API and the command line."""
    def text(key: str) -> str:
        value = form.get(key)
        return value.strip() if isinstance(value, str) else ""

    for key in DEFAULTS:
        if len(text(key)) > TEXT_LIMIT:
            raise ConfigError(f"{key} is longer than {TEXT_LIMIT} characters")
    cron, every = text("cron"), text("every")
    if cron and every:
        raise ConfigError("give either a cron expression or an interval (every), not both")
    if not cron and not every:
        raise ConfigError("give a cron expression or an interval in seconds (every)")
    found: dict[str, Any] = {"name": text("name"), "task": text("task")}
    if cron:
        found["cron"] = cron
    else:
        found["every"] = _parse_number("every", every)
    grace = text("misfire_grace")
    found.update(
        tz=text("tz") or "UTC", args=args_from_json(text("args") or "{}", "args"),
        overlap=text("overlap") or "skip", catch_up=text("catch_up") or "latest",
        catch_up_limit=_parse_number("catch-up limit", text("catch_up_limit") or "100", True),
        misfire_grace=_parse_number("misfire grace", grace) if grace else None,
        queue=text("queue") or None, priority=_parse_number("priority",
                                                            text("priority") or "0", True),
        jitter=_parse_number("jitter", text("jitter") or "0"),
        enabled=bool(form.get("enabled")))
    if not found["task"]:
        raise ConfigError("choose the task the schedule runs")
    return found


def _unmask(given: Any, stored: Any) -> Any:
    """Args from the edit form with each value still shown masked put back as stored, so saving
    a schedule whose args hold a secret keeps the secret."""
    if isinstance(given, dict) and isinstance(stored, dict):
        return {key: stored[key] if value == REDACTED and key in stored else
                _unmask(value, stored.get(key)) for key, value in given.items()}
    return given


def _form_values(fields: dict[str, list[str]]) -> dict[str, Any]:
    values: dict[str, Any] = {key: (fields.get(key) or [""])[0] for key in DEFAULTS}
    values["enabled"] = (fields.get("enabled") or [""])[0] == "on"
    return values


def create(d: Dashboard, r: Request, fields: dict[str, list[str]]) -> str:
    values = _form_values(fields)
    try:
        body = definition(values)
        if not body["name"]:
            raise ConfigError("a schedule needs a name")
        made = d.schedule_define(body)
    except ConfigError as exc:
        context = schedules_page(d, r) | {"form": values, "form_error": mask_text(str(exc))}
        raise FormRefused("schedules.html", 400, context) from None
    return f"/schedules/{quote(made['schedule'], safe='')}?done=schedule-created"


def update(d: Dashboard, r: Request, fields: dict[str, list[str]]) -> str:
    name = path_name(r)
    values = _form_values(fields) | {"name": name}
    try:
        body = definition(values)
        body.pop("name")
        row, _ = d.app.stored_schedule(name)
        body["args"] = _unmask(body["args"], row.spec.get("args") or {})
        d.schedule_define(body, name)
    except ConfigError as exc:
        context = schedule_page(d, r) | {"form": values, "form_error": mask_text(str(exc))}
        raise FormRefused("schedule.html", 400, context) from None
    return f"/schedules/{quote(name, safe='')}?done=schedule-updated"


def button(verb: str) -> Any:
    def do(d: Dashboard, r: Request, fields: dict[str, list[str]]) -> str:
        name = path_name(r)
        body: dict[str, Any] = {}
        if verb == "pause":
            body["reason"] = (fields.get("reason") or [""])[0].strip()[:500] or None
        done = d.schedule_action(name, verb, body)
        if verb == "delete":
            return "/schedules?done=schedule-deleted"
        said = "trigger-none" if verb == "trigger" and done["job_id"] is None else verb
        return f"/schedules/{quote(name, safe='')}?done=schedule-{said}"

    return do


def backfill(d: Dashboard, r: Request, fields: dict[str, list[str]]) -> str:
    name = path_name(r)
    body = {key: (fields.get(key) or [""])[0].strip() for key in ("from", "to")}
    made = d.schedule_action(name, "backfill", {**body, "yes": bool(fields.get("yes"))})
    return (f"/schedules/{quote(name, safe='')}?done=schedule-backfill"
            f"&count={len(made['job_ids'])}")


def routes(action: Any, page: Any) -> list[Route]:
    return [
        Route("/schedules", page("schedules.html", schedules_page)),
        Route("/schedules", action(create), methods=["POST"]),
        Route("/schedules/{name}", page("schedule.html", schedule_page)),
        Route("/schedules/{name}/update", action(update), methods=["POST"]),
        Route("/schedules/{name}/backfill", action(backfill), methods=["POST"]),
        *(Route(f"/schedules/{{name}}/{verb}", action(button(verb)), methods=["POST"])
          for verb in BUTTONS),
    ]
