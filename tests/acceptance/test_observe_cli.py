"""The observability commands as a user runs them: `anomalies`, `dashboard` and
`worker --metrics-port`, in real processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta

from tests.acceptance.test_cli import oncely as run
from tests.acceptance.test_cli import one_line_error
from tests.conftest import ROOT
from tests.observe_data import SCHEDULE, billing_app

import oncely
from oncely.testing import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def test_anomalies_check_list_and_resolve(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    # The schedule was registered five hours ago and no worker has enqueued a slot since.
    app = billing_app(url, oncely.FrozenClock(datetime.now(UTC) - timedelta(hours=5)))
    app.register_schedules()
    app.close()
    checked = run("--database-url", url, "--json", "anomalies", "check")
    assert checked.returncode == 0, checked.stderr
    [raised] = json.loads(checked.stdout)
    assert (raised["change"], raised["kind"]) == ("raised", "too_few")
    assert raised["summary"].startswith(f"schedule {SCHEDULE}: 0 of ")
    listed = json.loads(run("--database-url", url, "--json", "anomalies").stdout)
    assert [a["id"] for a in listed] == [raised["id"]]
    assert "too_few" in run("--database-url", url, "anomalies").stdout
    again = json.loads(run("--database-url", url, "--json", "anomalies", "check").stdout)
    assert [(a["change"], a["id"]) for a in again] == [("open", raised["id"])]
    done = run("--database-url", url, "anomalies", "resolve", str(raised["id"]))
    assert done.returncode == 0 and "resolved" in done.stdout
    one_line_error(run("--database-url", url, "anomalies", "resolve", str(raised["id"])), 5,
                   f"no open anomaly {raised['id']}")
    assert run("--database-url", url, "--json", "anomalies").stdout.strip() == "[]"
    assert len(json.loads(run("--database-url", url, "--json", "anomalies", "--all").stdout)) == 1


def test_the_dashboard_command_serves_pages_api_and_metrics(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    assert run("--database-url", url, "migrate").returncode == 0
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "oncely", "--database-url", url, "dashboard", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: fetch(base + "/healthz") == "ok", timeout=20,
                   message="dashboard answering /healthz")
        assert "oncely_queue_jobs" in (fetch(base + "/metrics") or "") or "oncely_workers" in (
            fetch(base + "/metrics") or "")
        assert json.loads(fetch(base + "/api/openapi.json") or "{}")["openapi"].startswith("3.")
        assert "read-only" in (fetch(base + "/") or "")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


def test_the_worker_serves_its_metrics(tmp_path, workers, effects_sqlite) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    port = free_port()
    workers.start(url, effects_sqlite, "--metrics-port", str(port))
    metrics = f"http://127.0.0.1:{port}/metrics"
    text = wait_until(lambda: fetch(metrics), timeout=30, message="worker metrics answering")
    wait_until(lambda: 'oncely_events_total{event="worker.started"} 1.0' in (fetch(metrics) or ""),
               timeout=30, message="worker.started counted")
    assert "oncely_store_up 1.0" in text
    assert workers.stop_all(signal.SIGTERM) == [0]
