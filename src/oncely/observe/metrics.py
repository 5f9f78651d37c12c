"""Per-process Prometheus metrics, computed from the event stream.

:class:`ProcessMetrics` subscribes to an app's :class:`~oncely.observe.events.EventBus` and keeps
counters and histograms in its own registry; ``oncely worker --metrics-port`` serves them. They
describe *this* process (what it claimed, ran, lost); fleet-wide numbers computed from the store
are served by the dashboard (:mod:`oncely.observe.fleet`).

=================================================  =========  ==============================
metric                                             type       labels
=================================================  =========  ==============================
oncely_jobs_total                                  counter    queue, task, outcome
oncely_jobs_claimed_total                          counter    queue, task
oncely_job_duration_seconds                        histogram  queue, task
oncely_job_wait_seconds                            histogram  queue, task
oncely_worker_running_jobs                         gauge
oncely_jobs_enqueued_total                         counter    task
oncely_jobs_rescued_total                          counter    task, outcome, reason
oncely_jobs_released_total                         counter    task
oncely_leases_lost_total                           counter    reason (lost, self_fenced)
oncely_fence_rejections_total                      counter    task
oncely_slots_total                                 counter    schedule, outcome
oncely_leader                                      gauge      (1 while this process leads)
oncely_leader_changes_total                        counter    change (elected, lost, resigned)
oncely_maintenance_runs_total                      counter    service, result (ok, failed)
oncely_anomalies_total                             counter    kind, change (raised, resolved)
oncely_store_up                                    gauge      (0 after store.unavailable)
oncely_events_total                                counter    event
=================================================  =========  ==============================
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from oncely.observe.events import Event, EventBus

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200)
WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
_OUTCOMES = ("succeeded", "failed", "retryable", "cancelled")
_SLOT_OUTCOMES = ("enqueued", "triggered", "skipped_overlap", "missed", "coalesced")
_GONE = ("job.abandoned", "lease.lost")  # the worker stops tracking the job: no outcome follows


class ProcessMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter("oncely_jobs", "Jobs this process finished, by outcome",
                            ["queue", "task", "outcome"], registry=r)
        self.claimed = Counter("oncely_jobs_claimed", "Jobs this process claimed",
                               ["queue", "task"], registry=r)
        self.duration = Histogram("oncely_job_duration_seconds", "Handler run time",
                                  ["queue", "task"], buckets=DURATION_BUCKETS, registry=r)
        self.wait = Histogram("oncely_job_wait_seconds", "From due (run_at) to claimed",
                              ["queue", "task"], buckets=WAIT_BUCKETS, registry=r)
        self.running = Gauge("oncely_worker_running_jobs", "Jobs this process is running",
                             registry=r)
        self.enqueued = Counter("oncely_jobs_enqueued", "Jobs this process enqueued", ["task"],
                                registry=r)
        self.rescued = Counter("oncely_jobs_rescued",
                               "Jobs of gone or silent workers this process rescued",
                               ["task", "outcome", "reason"], registry=r)
        self.released = Counter("oncely_jobs_released", "Jobs released at shutdown", ["task"],
                                registry=r)
        self.leases_lost = Counter("oncely_leases_lost", "Leases this process lost",
                                   ["reason"], registry=r)
        self.fence_rejections = Counter("oncely_fence_rejections",
                                        "Writes refused because the fence moved on", ["task"],
                                        registry=r)
        self.slots = Counter("oncely_slots", "Schedule slots recorded by this process",
                             ["schedule", "outcome"], registry=r)
        self.leader = Gauge("oncely_leader", "1 while this process is the leader", registry=r)
        self.leader_changes = Counter("oncely_leader_changes", "Leadership changes seen here",
                                      ["change"], registry=r)
        self.maintenance = Counter("oncely_maintenance_runs", "Maintenance service runs",
                                   ["service", "result"], registry=r)
        self.anomalies = Counter("oncely_anomalies", "Anomalies raised or resolved here",
                                 ["kind", "change"], registry=r)
        self.store_up = Gauge("oncely_store_up", "0 while the store is unreachable", registry=r)
        self.events = Counter("oncely_events", "Events emitted, by name", ["event"], registry=r)
        self.store_up.set(1)
        self._running: dict[int, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self.running.set_function(lambda: float(len(self._running)))
        self._dispatch = self._handlers()

    def attach(self, bus: EventBus) -> Callable[[], None]:
        return bus.subscribe(self)

    def __call__(self, event: Event) -> None:
        self.events.labels(event.name).inc()
        handler = self._dispatch.get(event.name)
        if handler is not None:
            handler(event.fields)
        elif event.name.startswith("job.") and event.name[4:] in _OUTCOMES:
            self._finished(event.name[4:], event.fields)
        elif event.name.startswith("slot.") and event.name[5:] in _SLOT_OUTCOMES:
            self.slots.labels(str(event.fields.get("schedule")), event.name[5:]).inc()

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], None]]:
        return {
            "job.claimed": self._claimed,
            "job.enqueued": lambda f: self.enqueued.labels(str(f.get("task"))).inc(),
            "job.rescued": lambda f: self.rescued.labels(
                str(f.get("task")), str(f.get("outcome")), str(f.get("reason"))).inc(),
            "job.released": lambda f: self.released.labels(str(f.get("task"))).inc(),
            "job.abandoned": self._gone,
            "job.unrecorded": self._gone,
            "lease.lost": self._lease_lost,
            "lease.self_fenced": lambda f: self.leases_lost.labels("self_fenced").inc(),
            "fence.rejected": self._fence_rejected,
            "leader.elected": lambda f: self._leader("elected", 1),
            "leader.lost": lambda f: self._leader("lost", 0),
            "leader.resigned": lambda f: self._leader("resigned", 0),
            "maintenance.ran": lambda f: self.maintenance.labels(str(f.get("service")),
                                                                 "ok").inc(),
            "maintenance.failed": lambda f: self.maintenance.labels(str(f.get("service")),
                                                                    "failed").inc(),
            "anomaly.raised": lambda f: self.anomalies.labels(str(f.get("kind")), "raised").inc(),
            "anomaly.resolved": lambda f: self.anomalies.labels(str(f.get("kind")),
                                                                "resolved").inc(),
            "store.unavailable": lambda f: self.store_up.set(0),
            "store.recovered": lambda f: self.store_up.set(1),
        }

    def _claimed(self, fields: dict[str, Any]) -> None:
        queue, task = str(fields.get("queue", "")), str(fields.get("task", ""))
        self.claimed.labels(queue, task).inc()
        wait = fields.get("wait")
        if isinstance(wait, int | float):
            self.wait.labels(queue, task).observe(float(wait))
        job_id = fields.get("job_id")
        if isinstance(job_id, int):
            with self._lock:
                self._running[job_id] = (queue, task)

    def _finished(self, outcome: str, fields: dict[str, Any]) -> None:
        job_id = fields.get("job_id")
        with self._lock:
            known = self._running.pop(job_id, None) if isinstance(job_id, int) else None
        queue = str(fields.get("queue") or (known[0] if known else ""))
        task = str(fields.get("task") or (known[1] if known else ""))
        self.jobs.labels(queue, task, outcome).inc()
        duration = fields.get("duration")
        if isinstance(duration, int | float):
            self.duration.labels(queue, task).observe(float(duration))

    def _gone(self, fields: dict[str, Any]) -> None:
        job_id = fields.get("job_id")
        if isinstance(job_id, int):
            with self._lock:
                self._running.pop(job_id, None)

    def _lease_lost(self, fields: dict[str, Any]) -> None:
        self.leases_lost.labels("lost").inc()
        self._gone(fields)

    def _fence_rejected(self, fields: dict[str, Any]) -> None:
        self.fence_rejections.labels(str(fields.get("task"))).inc()
        if "transition" in fields:  # the worker's own finish was refused: the job is gone
            self._gone(fields)

    def _leader(self, change: str, value: int) -> None:
        self.leader_changes.labels(change).inc()
        self.leader.set(value)


def serve_process_metrics(
    bus: EventBus, port: int, host: str = "127.0.0.1"
) -> tuple[ProcessMetrics, WSGIServer]:
    """Subscribe a :class:`ProcessMetrics` to ``bus`` and serve it at ``http://host:port/metrics``
    from a daemon thread (``port=0`` picks a free port: see ``server.server_port``)."""
    metrics = ProcessMetrics()
    metrics.attach(bus)
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return metrics, server
