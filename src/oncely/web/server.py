"""``oncely dashboard``: serve the dashboard with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
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


def serve(app: App, host: str = "127.0.0.1", port: int = 8700, token: str | None = None,
          allowed_hosts: Sequence[str] = (), auth: str = "actions") -> None:
    try:
        import uvicorn

        from oncely.web.app import create_app
    except ImportError as exc:
        raise ConfigError(f"the dashboard needs its extra ({exc.name} is missing): "
                          "pip install 'oncely[web]'") from None
    web = create_app(app, token, allowed_hosts, auth, host)  # checks token, auth, hosts first
    _check_address(host, port)
    if not _loopback(host):
        log.warning("dashboard bound to %s: anyone who can reach it can read job data%s", host,
                    " without the token (use --auth reads)" if auth != "reads" else "")
        if not allowed_hosts:
            log.warning("only Host headers naming %s or the loopback are answered: add the "
                        "names clients use with --allowed-host", host)
    app.store.check_schema()
    mode = "actions enabled (sign in with the token)" if token else "read-only"
    log.info("oncely dashboard on http://%s:%d (%s%s)", host, port, mode,
             "; reads need the token" if auth == "reads" else "")
    uvicorn.run(web, host=host, port=port, log_level="warning", server_header=False)


def _check_address(host: str, port: int) -> None:
    """Refuse an address that cannot be listened on with one line (exit 2), before uvicorn
    would: it logs the error and exits 3, which is our code for a store failure."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError, ValueError) as exc:
        raise ConfigError(f"--host {ascii(host)[:80]} is not an address to listen on: "
                          f"{exc}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose "
                              "another --port or --host") from None
