"""``oncely demo``: the billing incident replayed on oncely, unsafely and then guarded.

* :mod:`oncely.sim.command` — the ``oncely demo`` command (options only);
* :mod:`oncely.sim.demo` — :func:`~oncely.sim.demo.run`, the whole demo;
* :mod:`oncely.sim.plan` — options and everything derived from them (clock, leases, timeline);
* :mod:`oncely.sim.dataset` — the usage dataset and each phase's fresh store;
* :mod:`oncely.sim.before` — what the deployment before the simulated day left in each store;
* :mod:`oncely.sim.services` — the local Stripe stub and SMTP capture;
* :mod:`oncely.sim.fleet` — the worker processes (start, restart, SIGKILL, SIGSTOP/SIGCONT);
* :mod:`oncely.sim.app` — the app those workers run;
* :mod:`oncely.sim.phase` — one phase, start to finish; :mod:`oncely.sim.measure` — its figures;
* :mod:`oncely.sim.report` and :mod:`oncely.sim.page` — the terminal table, ``report.json`` and
  ``report.html``.
"""
