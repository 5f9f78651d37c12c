"""Anomaly notifications: a JSON POST to a webhook, retried with exponential backoff.

The body is ``{"event": "anomaly.raised" | "anomaly.resolved", "text": <summary>, "anomaly":
{…}}`` (``text`` makes it readable as-is by chat incoming webhooks). Connection errors, 5xx and
429 answers are retried (``attempts`` in all, waiting ``backoff``, then twice that, …); any other
4xx is final. Delivery runs in a background thread by default so a slow receiver never holds up
maintenance; every outcome is reported as an event (``anomaly.notified`` or
``anomaly.notify_failed``).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from oncely.errors import ConfigError
from oncely.redaction import mask_url
from oncely.store.observability import Anomaly

Emit = Callable[..., Any]


def anomaly_to_dict(anomaly: Anomaly) -> dict[str, Any]:
    return {
        "id": anomaly.id,
        "kind": str(anomaly.kind),
        "subject": anomaly.subject,
        "severity": anomaly.severity,
        "summary": anomaly.summary,
        "schedule": anomaly.schedule,
        "ratio": anomaly.ratio,
        "evidence": anomaly.evidence,
        "advice": anomaly.advice,
        "first_seen_at": anomaly.first_seen_at.isoformat(),
        "last_seen_at": anomaly.last_seen_at.isoformat(),
        "resolved_at": anomaly.resolved_at.isoformat() if anomaly.resolved_at else None,
        "occurrences": anomaly.occurrences,
    }


def payload(event: str, anomaly: Anomaly) -> dict[str, Any]:
    prefix = "resolved: " if event == "anomaly.resolved" else ""
    return {"event": event, "text": f"oncely {prefix}{anomaly.summary}",
            "anomaly": anomaly_to_dict(anomaly)}


@dataclass(frozen=True)
class Delivery:
    ok: bool
    attempts: int
    status: int | None
    error: str | None = None


class WebhookNotifier:
    def __init__(
        self,
        url: str,
        *,
        attempts: int = 4,
        backoff: float = 1.0,
        timeout: float = 5.0,
        background: bool = True,
        emit: Emit | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"the watchdog webhook URL must start with http:// or https://, "
                              f"got {mask_url(url)!r} (ONCELY_WATCHDOG_WEBHOOK_URL)")
        self.url = url
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.timeout = timeout
        self.background = background
        self.emit = emit
        self.sleep = sleep
        self._threads: list[threading.Thread] = []

    def submit(self, payloads: Sequence[dict[str, Any]]) -> list[Delivery]:
        """Deliver each payload, in order; in the background unless ``background=False``."""
        if not payloads:
            return []
        if not self.background:
            return [self.deliver(body) for body in payloads]
        thread = threading.Thread(target=lambda: [self.deliver(b) for b in payloads],
                                  name="oncely-webhook", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return []

    def join(self, timeout: float | None = None) -> None:
        for thread in list(self._threads):
            thread.join(timeout)

    def deliver(self, body: dict[str, Any]) -> Delivery:
        data = json.dumps(body, default=str).encode()
        status: int | None = None
        error: str | None = None
        for attempt in range(1, self.attempts + 1):
            status, error = self._post(data)
            if status is not None and 200 <= status < 300:
                self._report("anomaly.notified", body, attempt, status, None)
                return Delivery(True, attempt, status)
            final = status is not None and 400 <= status < 500 and status != 429
            if final or attempt == self.attempts:
                break
            self.sleep(self.backoff * 2 ** (attempt - 1))
        self._report("anomaly.notify_failed", body, attempt, status, error)
        return Delivery(False, attempt, status, error)

    def _post(self, data: bytes) -> tuple[int | None, str | None]:
        request = urllib.request.Request(
            self.url, data=data, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "oncely-watchdog"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status), None
        except urllib.error.HTTPError as exc:
            return int(exc.code), f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            return None, str(getattr(exc, "reason", exc))

    def _report(
        self, name: str, body: dict[str, Any], attempts: int, status: int | None, error: str | None
    ) -> None:
        if self.emit is None:
            return
        anomaly = body.get("anomaly", {})
        self.emit(name, anomaly_id=anomaly.get("id"), kind=anomaly.get("kind"),
                  notification=body.get("event"), attempts=attempts, status=status, error=error)
