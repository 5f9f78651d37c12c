"""Observability: the engine's event stream and what subscribes to it or reads the store.

* :mod:`~oncely.observe.events` — the event bus and the structured-log subscriber;
* :mod:`~oncely.observe.metrics` — per-process Prometheus metrics from the events;
* :mod:`~oncely.observe.fleet` — fleet metrics computed from the store (the dashboard's /metrics);
* :mod:`~oncely.observe.recorder` — events counted fleet-wide are written to the store;
* :mod:`~oncely.observe.diagnose` — expected versus observed executions: the watchdog's checks;
* :mod:`~oncely.observe.doctor` — ``oncely doctor``;
* :mod:`~oncely.observe.notify` — anomaly webhooks.
"""
