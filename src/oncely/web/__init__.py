"""The dashboard: server-rendered pages, a JSON API with its OpenAPI document, and the fleet's
Prometheus metrics, all reading through :mod:`oncely.readmodel`.

:func:`oncely.web.app.create_app` builds the Starlette application; ``oncely dashboard`` serves it
(127.0.0.1:8700 by default). It is read-only unless started with a token (``--token`` or
``ONCELY_DASHBOARD_TOKEN``); see :mod:`oncely.web.auth` for how actions are protected.
"""
