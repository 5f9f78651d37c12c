"""Maintenance services: small classes, each with ``run_once()`` returning a result object.

* :class:`~oncely.maintenance.enqueuer.SlotEnqueuer` — turns due schedule slots into jobs (runs on
  every worker: the ledger's uniqueness makes duplicates impossible, and slots keep flowing while
  leadership changes hands);
* :class:`~oncely.maintenance.leader.LeaderElector` — holds or seeks the leader lease;
* :class:`~oncely.maintenance.rescuer.Rescuer` — jobs of provably gone workers and expired leases
  → retry with the attempt given back, or failure past ``max_rescues`` (every worker: fenced);
* :class:`~oncely.maintenance.pruner.Pruner` — retention of finished jobs (leader).

:class:`~oncely.maintenance.supervisor.Supervisor` runs them in one thread per worker.
"""
