"""``oncely demo``: the billing incident replayed on oncely, unsafely and then guarded.

* :mod:`oncely.sim.plan` — options and everything derived from them (clock, leases, timeline);
* :mod:`oncely.sim.dataset` — the usage dataset and each phase's fresh store;
* :mod:`oncely.sim.services` — the local Stripe stub and SMTP capture;
* :mod:`oncely.sim.fleet` — the worker processes (start, restart, SIGKILL, SIGSTOP/SIGCONT);
* :mod:`oncely.sim.app` — the app those workers run;
* :mod:`oncely.sim.phase` — one phase, start to finish; :mod:`oncely.sim.measure` — its figures;
* :mod:`oncely.sim.report` — the terminal table, ``report.html`` and ``report.json``;
* :mod:`oncely.sim.demo` — :func:`~oncely.sim.demo.run`, the whole demo.
"""
