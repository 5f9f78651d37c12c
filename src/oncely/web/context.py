"""What every request handler of the dashboard reaches: the app, its store and clock, the guard
and the few actions the dashboard may take (through the App's facade, as the CLI)."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request

from oncely import readmodel
from oncely.errors import ConfigError
from oncely.store.base import Store
from oncely.web.auth import Guard

if TYPE_CHECKING:
    from oncely.app import App


class Dashboard:
    def __init__(self, app: App, token: str | None, auth: str = "actions") -> None:
        self.app = app
        self.guard = Guard(token, auth)
        self.stale_after = app.settings.lease_ttl * 3
        self.nav: list[tuple[str, str]] = []  # (path, label) of the add-ons' pages
        try:
            self.version = version("oncely")
        except PackageNotFoundError:
            self.version = "0"

    @property
    def store(self) -> Store:
        return self.app.store

    def now(self) -> datetime:
        return self.app.clock.now()

    @property
    def by(self) -> str:
        """Who acts through this dashboard, for the events: which token (a digest of it, never
        the token), so two dashboards with different tokens are told apart."""
        return f"dashboard:{self.guard.token_id}"

    def retry(self, job_id: int) -> dict[str, Any]:
        job = self.app.retry_job(job_id, by=self.by)
        return readmodel.job_summary(job)

    def cancel(self, job_id: int, reason: str) -> dict[str, Any]:
        job = self.app.cancel_job(job_id, reason, by=self.by)
        return readmodel.job_summary(job)

    def pause(self, queue: str, reason: str | None) -> None:
        self.app.pause_queue(queue, reason or None, by=self.by)

    def resume(self, queue: str) -> None:
        self.app.resume_queue(queue, by=self.by)

    def retry_failed(self, queue: str | None, task: str | None) -> tuple[int, list[int]]:
        return self.app.retry_dead_letters(queue or None, task or None, by=self.by)

    def schedule_action(self, name: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """pause, resume, trigger, backfill or delete schedule ``name`` (the dashboard's buttons
        and the API, both recorded as this dashboard's token); the result the API returns."""
        app, by = self.app, self.by
        if action == "pause":
            app.pause_schedule(name, body.get("reason"), by=by)
        elif action == "resume":
            return {"schedule": name, "caught_up": [h.id for h in app.resume_schedule(name, by=by)]}
        elif action == "trigger":
            handle = app.trigger(name, by=by)
            return {"schedule": name, "job_id": handle.id if handle else None}
        elif action == "backfill":
            start, end = _instant(body, "from"), _instant(body, "to")
            made = app.backfill_schedule(name, start, end, yes=bool(body.get("yes")), by=by)
            return {"schedule": name, "job_ids": [h.id for h in made]}
        elif action == "delete":
            app.delete_schedule(name, force=bool(body.get("force")), by=by)
            return {"schedule": name, "deleted": True}
        else:
            raise ConfigError(f"unknown schedule action {action!r}")
        return {"schedule": name, "state": "paused" if action == "pause" else "active"}

    def schedule_define(self, body: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """Create (``name`` None) or update a dynamic schedule from a JSON body (the API) or the
        dashboard's form, recorded as this dashboard's token."""
        fields, by = dict(body), self.by
        if name is None:
            name, task = str(fields.pop("name", "")), str(fields.pop("task", ""))
            if not name or not task:
                raise ConfigError("a schedule needs a name and a task")
            row = self.app.create_schedule(name, task, by=by, **fields)
        else:
            row = self.app.update_schedule(name, by=by, **fields)
        return {"schedule": row.name, "revision": row.revision, "origin": row.origin}


def _instant(body: dict[str, Any], key: str) -> datetime:
    raw = body.get(key)
    try:
        moment = datetime.fromisoformat(str(raw))
    except ValueError:
        raise ConfigError(f"{key!r} must be an ISO 8601 time, got {raw!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def dashboard(request: Request) -> Dashboard:
    return cast(Dashboard, request.app.state.dashboard)
