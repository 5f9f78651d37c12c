"""Errors of the billing workloads, under oncely's one root::

    oncely.OncelyError
    └── MeteringError                   anything oncely_billing raises on purpose
        ├── UsageSourceError            a usage query failed in a way retrying will not fix
        │   └── UsageSourceUnavailable  the usage source stayed down (retries spent, circuit open)
        └── UnknownOrganization         no organization has that id (exit code 5)
"""

from __future__ import annotations

import oncely


class MeteringError(oncely.OncelyError):
    """Root of the errors oncely_billing raises."""


class UsageSourceError(MeteringError):
    """A usage-source query failed (bad SQL, missing table): retrying would not help."""

    exit_code = 3


class UsageSourceUnavailable(UsageSourceError):
    """The usage source could not be reached or answered in time, even after retries."""


class UnknownOrganization(MeteringError):
    exit_code = 5
