"""Fleet metrics computed from the store at scrape time, served by the dashboard at ``/metrics``.

They read the shared database, so they are right however many workers run and whichever of them
is scraped (per-process metrics are in :mod:`oncely.observe.metrics`). Counts over a window carry
a ``window`` label and are gauges: they go down as the window slides.

=========================================  =====  =========================================
metric                                     type   labels
=========================================  =====  =========================================
oncely_queue_jobs                          gauge  queue, state
oncely_queue_due_jobs                      gauge  queue (waiting with run_at <= now)
oncely_queue_oldest_waiting_seconds        gauge  queue
oncely_queue_running_jobs                  gauge  queue
oncely_queue_executions_per_minute         gauge  queue (attempts started, last 15 min)
oncely_dead_letters                        gauge  queue (failed jobs kept)
oncely_queue_paused                        gauge  queue (1 while paused)
oncely_queue_held_jobs                     gauge  queue, reason (due jobs a queue control
                                                  holds back: paused, max_running, rate)
oncely_schedule_executions                 gauge  schedule, window, source (slot, retry,
                                                  non_slot)
oncely_schedule_expected_executions        gauge  schedule, window
oncely_schedule_execution_ratio            gauge  schedule, window (executions / expected)
oncely_lease_takeovers                     gauge  window
oncely_fence_rejections                    gauge  window
oncely_anomalies_open                      gauge  kind, severity
oncely_workers                             gauge  state (alive, stale)
oncely_leader_term                         gauge
=========================================  =====  =========================================

Installed add-ons add their own families (``oncely.metrics`` plugins, see :mod:`oncely.plugins`
and :mod:`oncely.observe.addons`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oncely import readmodel
from oncely.observe.addons import AddonCollectors
from oncely.store.base import Store
from oncely.types import JobState

WINDOW = 3600.0
WINDOW_LABEL = "1h"


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class FleetCollector(Collector):
    def __init__(
        self, store: Callable[[], Store], now: Callable[[], datetime], stale_after: float = 90.0
    ) -> None:
        self.store = store
        self.now = now
        self.stale_after = stale_after

    def collect(self) -> Iterator[Metric]:
        store, now = self.store(), self.now()
        summary = readmodel.fleet(store, now, self.stale_after)
        yield from self._queues(summary["queues"])
        yield from self._schedules(readmodel.schedule_rates(store, now, WINDOW))
        takeovers = _gauge("oncely_lease_takeovers",
                           "Key leases granted over an expired, unreleased holder", ["window"])
        takeovers.add_metric([WINDOW_LABEL], summary["lease_takeovers_1h"])
        rejections = _gauge("oncely_fence_rejections",
                            "Writes refused because the writer's fence moved on", ["window"])
        rejections.add_metric([WINDOW_LABEL], summary["fence_rejections_1h"])
        anomalies = _gauge("oncely_anomalies_open", "Open anomalies raised by the watchdog",
                           ["kind", "severity"])
        open_by = Counter((a.kind.value, a.severity)
                          for a in store.anomaly_list(open_only=True, limit=10_000))
        for (kind, severity), count in sorted(open_by.items()):
            anomalies.add_metric([kind, severity], count)
        workers = _gauge("oncely_workers", "Registered workers by liveness", ["state"])
        workers.add_metric(["alive"], summary["workers_alive"])
        workers.add_metric(["stale"], summary["workers_stale"])
        term = _gauge("oncely_leader_term", "The leader lease's fence (grows with each leader)")
        term.add_metric([], summary["leader_term"])
        yield from (takeovers, rejections, anomalies, workers, term)

    def _queues(self, queues: list[dict[str, object]]) -> Iterator[Metric]:
        jobs = _gauge("oncely_queue_jobs", "Jobs per queue and state", ["queue", "state"])
        due = _gauge("oncely_queue_due_jobs", "Jobs due and waiting to be claimed", ["queue"])
        oldest = _gauge("oncely_queue_oldest_waiting_seconds",
                        "How long the oldest due job has waited", ["queue"])
        running = _gauge("oncely_queue_running_jobs", "Jobs running now", ["queue"])
        rate = _gauge("oncely_queue_executions_per_minute",
                      "Attempts started per minute over the last 15 minutes", ["queue"])
        dead = _gauge("oncely_dead_letters", "Failed jobs kept as dead letters", ["queue"])
        paused = _gauge("oncely_queue_paused", "1 while the queue is paused", ["queue"])
        held = _gauge("oncely_queue_held_jobs", "Due jobs a queue control holds back",
                      ["queue", "reason"])
        for row in queues:
            queue = str(row["queue"])
            for state in JobState:
                jobs.add_metric([queue, state.value], _num(row[state.value]))
            due.add_metric([queue], _num(row["due"]))
            oldest.add_metric([queue], _num(row["oldest_waiting_seconds"]))
            running.add_metric([queue], _num(row["running"]))
            rate.add_metric([queue], _num(row["rate_per_minute"]))
            dead.add_metric([queue], _num(row["failed"]))
            paused.add_metric([queue], 1.0 if row.get("paused") else 0.0)
            if row.get("held"):
                held.add_metric([queue, str(row["held"])], _num(row.get("held_jobs")))
        yield from (jobs, due, oldest, running, rate, dead, paused, held)

    def _schedules(self, rates: list[dict[str, object]]) -> Iterator[Metric]:
        executions = _gauge("oncely_schedule_executions",
                            "Attempts of the schedule's task started in the window",
                            ["schedule", "window", "source"])
        expected = _gauge("oncely_schedule_expected_executions",
                          "Slots the schedule's definition puts in the window",
                          ["schedule", "window"])
        ratio = _gauge("oncely_schedule_execution_ratio",
                       "Executions divided by expected (at least 1)", ["schedule", "window"])
        for row in rates:
            name = str(row["schedule"])
            first_runs = _num(row["slot_runs"])
            executions.add_metric([name, WINDOW_LABEL, "slot"], first_runs)
            executions.add_metric([name, WINDOW_LABEL, "retry"], _num(row["retries"]))
            executions.add_metric([name, WINDOW_LABEL, "non_slot"], _num(row["non_slot"]))
            expected.add_metric([name, WINDOW_LABEL], _num(row["expected"]))
            ratio.add_metric([name, WINDOW_LABEL], _num(row["ratio"]))
        yield from (executions, expected, ratio)


def fleet_registry(
    store: Callable[[], Store], now: Callable[[], datetime], stale_after: float = 90.0,
    addons: Mapping[str, Collector] | None = None,
) -> CollectorRegistry:
    """The engine's fleet families, then those of ``addons`` (by name), each add-on guarded by
    :class:`~oncely.observe.addons.AddonCollectors`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store, now, stale_after))
    if addons:
        registry.register(AddonCollectors(addons))
    return registry
