"""What every request handler of the dashboard reaches: the app, its store and clock, the guard
and the few actions the dashboard may take (through the App's facade, as the CLI)."""

from __future__ import annotations

from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request

from oncely import readmodel
from oncely.store.base import Store
from oncely.web.auth import Guard

if TYPE_CHECKING:
    from oncely.app import App


class Dashboard:
    def __init__(self, app: App, token: str | None, auth: str = "actions") -> None:
        self.app = app
        self.guard = Guard(token, auth)
        self.stale_after = app.settings.lease_ttl * 3
        try:
            self.version = version("oncely")
        except PackageNotFoundError:
            self.version = "0"

    @property
    def store(self) -> Store:
        return self.app.store

    def now(self) -> datetime:
        return self.app.clock.now()

    def retry(self, job_id: int) -> dict[str, Any]:
        job = self.app.retry_job(job_id, by="dashboard")
        return readmodel.job_summary(job)

    def cancel(self, job_id: int, reason: str) -> dict[str, Any]:
        job = self.app.cancel_job(job_id, reason, by="dashboard")
        return readmodel.job_summary(job)


def dashboard(request: Request) -> Dashboard:
    return cast(Dashboard, request.app.state.dashboard)
