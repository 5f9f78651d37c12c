"""``oncely dashboard``: serve the dashboard with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING

from oncely.errors import ConfigError

if TYPE_CHECKING:
    from oncely.app import App

log = logging.getLogger("oncely.web")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(app: App, host: str = "127.0.0.1", port: int = 8700, token: str | None = None) -> None:
    try:
        import uvicorn

        from oncely.web.app import create_app
    except ImportError as exc:
        raise ConfigError(f"the dashboard needs its extra ({exc.name} is missing): "
                          "pip install 'oncely[web]'") from None
    if not _loopback(host):
        log.warning("dashboard bound to %s: anyone who can reach it can read job data%s", host,
                    "" if token else "; it stays read-only (no --token)")
    app.store.check_schema()
    mode = "actions enabled (sign in with the token)" if token else "read-only"
    log.info("oncely dashboard on http://%s:%d (%s)", host, port, mode)
    uvicorn.run(create_app(app, token), host=host, port=port, log_level="warning",
                server_header=False)
