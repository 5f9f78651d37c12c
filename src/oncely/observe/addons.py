"""Add-ons' families in the fleet ``/metrics``, each behind a guard (``oncely.metrics`` plugins).

Whatever an add-on's collector does, the engine's families are still served:

* ``collect()`` raising, or returning something that is not a metric family, drops that add-on's
  families from this scrape (all of them: never half a set) and counts an error;
* an add-on may name its families anything outside the engine's ``oncely_`` namespace except its
  own ``oncely_<addon>_`` prefix; a family named by the engine's namespace, or twice in one scrape,
  is refused the same way (two ``# HELP`` lines for one name would make Prometheus reject the
  whole scrape);
* the first failure is logged with its traceback, the following ones of the same streak are only
  counted; a recovery is logged once.

Their own families describe the dashboard process that serves them:

========================================  =======  ======================================
metric                                    type     labels
========================================  =======  ======================================
oncely_addon_collector_errors_total       counter  addon (scrapes whose families were
                                                   dropped, since this process started)
oncely_addon_collector_up                 gauge    addon (0 when the last scrape failed)
oncely_addon_collector_duration_seconds   gauge    addon (the last scrape's collect time)
========================================  =======  ======================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oncely.redaction import mask_text

log = logging.getLogger("oncely.metrics")

ENGINE_PREFIX = "oncely_"


class AddonMetricsError(Exception):
    """An add-on's collector answered something the fleet /metrics cannot serve."""


class Broken(Collector):
    """Stands for an add-on whose collector could not be built: every scrape counts ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def collect(self) -> Iterator[Metric]:
        raise self.error


class AddonCollectors(Collector):
    def __init__(self, addons: Mapping[str, Collector]) -> None:
        self.addons = dict(sorted(addons.items()))
        self._lock = threading.Lock()
        self._errors = dict.fromkeys(self.addons, 0)
        self._up = dict.fromkeys(self.addons, 1)
        self._seconds = dict.fromkeys(self.addons, 0.0)

    def collect(self) -> Iterator[Metric]:
        seen: set[str] = set()
        for name, collector in self.addons.items():
            started = time.perf_counter()
            try:
                families = _families(name, collector, seen)
            except Exception as exc:
                self._failed(name, exc)
                families = []
            else:
                self._recovered(name)
            with self._lock:
                self._seconds[name] = time.perf_counter() - started
            yield from families
        yield from self._own()

    def _failed(self, name: str, exc: Exception) -> None:
        with self._lock:
            self._errors[name] += 1
            first = self._up[name] == 1
            self._up[name] = 0
        if first:
            log.error("add-on metrics %r dropped from /metrics: %s", name,
                      mask_text(f"{type(exc).__name__}: {exc}"),
                      exc_info=not isinstance(exc, AddonMetricsError),
                      extra={"event": "metrics.addon_failed", "addon": name})

    def _recovered(self, name: str) -> None:
        with self._lock:
            back = self._up[name] == 0
            self._up[name] = 1
        if back:
            log.info("add-on metrics %r served again", name,
                     extra={"event": "metrics.addon_recovered", "addon": name})

    def _own(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "oncely_addon_collector_errors",
            "Scrapes whose families of this add-on were dropped (its collector failed)",
            labels=["addon"])
        up = GaugeMetricFamily("oncely_addon_collector_up",
                               "1 while the add-on's families are served, 0 after a failure",
                               labels=["addon"])
        seconds = GaugeMetricFamily("oncely_addon_collector_duration_seconds",
                                    "How long the add-on's collector took at the last scrape",
                                    labels=["addon"])
        with self._lock:
            for name in self.addons:
                errors.add_metric([name], self._errors[name])
                up.add_metric([name], self._up[name])
                seconds.add_metric([name], round(self._seconds[name], 6))
        yield from (errors, up, seconds)


def _families(name: str, collector: Collector, seen: set[str]) -> list[Metric]:
    """Every family of one add-on's scrape, checked; raises on the first thing amiss."""
    own_prefix = f"{ENGINE_PREFIX}{name.replace('-', '_')}_"
    found = list(collector.collect())
    names: set[str] = set()
    for family in found:
        if not isinstance(family, Metric):
            raise AddonMetricsError(f"collect() gave a {type(family).__name__}, not a family")
        if family.name.startswith(ENGINE_PREFIX) and not family.name.startswith(own_prefix):
            raise AddonMetricsError(f"family {family.name!r} is in the engine's namespace: name "
                                    f"it {own_prefix}… or outside oncely_")
        if family.name in names or family.name in seen:
            raise AddonMetricsError(f"family {family.name!r} is served twice")
        names.add(family.name)
    seen.update(names)
    return found
