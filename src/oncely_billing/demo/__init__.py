"""``oncely demo``: the billing incident replayed on oncely, unsafely and then guarded.

* :mod:`.command` — the ``oncely demo`` command (options only);
* :mod:`.demo` — :func:`.demo.run`, the whole demo;
* :mod:`.plan` — options and everything derived from them (clock, leases, timeline);
* :mod:`.dataset` — the usage dataset and each phase's fresh store;
* :mod:`.before` — what the deployment before the simulated day left in each store;
* :mod:`.services` — the local Stripe stub and SMTP capture;
* :mod:`.fleet` — the worker processes (start, restart, SIGKILL, SIGSTOP/SIGCONT);
* :mod:`.app` — the app those workers run;
* :mod:`.incident_job` — the free-tier job as the incident's system had it, which the unsafe
  phase runs (the bad example: a full recount and every organization rewritten each run, the
  email sent before the state commits, no outbox);
* :mod:`.phase` — one phase, start to finish; :mod:`.measure` — its figures;
* :mod:`.report` and :mod:`.page` — the terminal table, ``report.json`` and
  ``report.html``.
"""
