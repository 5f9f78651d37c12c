"""The watchdog (leader only): expected executions per schedule versus what really ran.

``run_once`` evaluates every check of :mod:`oncely.observe.diagnose` at the clock's ``now``,
stores each finding as an anomaly (a new one is *raised*; one still open is updated, so an alarm
is not repeated every minute), resolves the open anomalies whose condition no longer holds, emits
``anomaly.raised`` / ``anomaly.resolved`` (logs and metrics subscribe to them) and hands new and
resolved anomalies to the webhook notifier, if one is configured
(``ONCELY_WATCHDOG_WEBHOOK_URL``). It also reports the lease takeovers the database recorded since
its previous run as ``lease.taken_over`` events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oncely.observe.diagnose import Finding, WatchdogConfig, evaluate
from oncely.observe.notify import WebhookNotifier, payload
from oncely.runtime import Runtime
from oncely.store.observability import LEASE_TAKEN_OVER, Anomaly


@dataclass(frozen=True)
class WatchdogResult:
    findings: list[Finding] = field(default_factory=list)
    raised: list[Anomaly] = field(default_factory=list)  # opened by this run
    updated: list[Anomaly] = field(default_factory=list)  # already open, seen again
    resolved: list[Anomaly] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.findings


class Watchdog:
    def __init__(
        self,
        runtime: Runtime,
        config: WatchdogConfig | None = None,
        notifier: WebhookNotifier | None = None,
    ) -> None:
        self.runtime = runtime
        self.config = config or runtime.watchdog
        url = runtime.settings.watchdog_webhook_url
        self.notifier = notifier or (
            WebhookNotifier(url, emit=runtime.events.emit) if url else None
        )
        self._takeovers_seen: int | None = None  # newest takeover already reported

    def _report_takeovers(self) -> None:
        """Lease takeovers are written by the database; the leader turns the new ones into
        ``lease.taken_over`` events so logs and metrics see them too."""
        recorded = self.runtime.store.event_list(LEASE_TAKEN_OVER, limit=200)
        newest = max((event.id for event in recorded), default=0)
        if self._takeovers_seen is not None:
            for event in sorted(recorded, key=lambda e: e.id):
                if event.id > self._takeovers_seen:
                    self.runtime.events.emit(
                        "lease.taken_over", job_id=event.job_id, task=event.task,
                        key=event.subject, owner=event.detail.get("owner"),
                        previous_owner=event.detail.get("previous_owner"),
                        fence=event.detail.get("fence"), at=event.at.isoformat())
        self._takeovers_seen = max(newest, self._takeovers_seen or 0)

    def run_once(self) -> WatchdogResult:
        runtime = self.runtime
        store, now = runtime.store, runtime.clock.now()
        findings = evaluate(store, now, self.config, stale_after=runtime.settings.lease_ttl * 3)
        result = WatchdogResult(findings)
        current = {finding.key for finding in findings}
        for finding in findings:
            raised = store.anomaly_raise(finding.to_raise(now))
            (result.raised if raised.created else result.updated).append(raised.anomaly)
            if raised.created:
                runtime.events.emit(
                    "anomaly.raised", anomaly_id=raised.anomaly.id, kind=str(finding.kind),
                    subject=finding.subject, severity=finding.severity,
                    schedule=finding.schedule, ratio=finding.ratio, summary=finding.summary,
                )
        for anomaly in store.anomaly_list(open_only=True, limit=10_000):
            if (str(anomaly.kind), anomaly.subject) in current:
                continue
            if store.anomaly_resolve(anomaly.id, now):
                closed = store.anomaly_get(anomaly.id) or anomaly
                result.resolved.append(closed)
                runtime.events.emit("anomaly.resolved", anomaly_id=anomaly.id,
                                    kind=str(anomaly.kind), subject=anomaly.subject,
                                    schedule=anomaly.schedule)
        if self.notifier is not None:
            self.notifier.submit(
                [payload("anomaly.raised", a) for a in result.raised]
                + [payload("anomaly.resolved", a) for a in result.resolved]
            )
        self._report_takeovers()
        runtime.events.emit("watchdog.checked", findings=len(findings), raised=len(result.raised),
                            resolved=len(result.resolved))
        return result
