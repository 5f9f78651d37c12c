"""Hourly usage per organization for Stripe metering, from a :class:`UsageSource`.

:class:`SourceHourlyUsage` is the :data:`~oncely_billing.meter.HourlyUsage` the job calls once
per hour: **one** set-based query to the usage source for the hour (counts per project), plus
one query on the job store mapping projects to their organizations' Stripe customer ids; the sum
per org happens here. Projects count while they were live during the hour (not deleted before
it started); orgs without a Stripe customer id are not metered.

Time base: **event time**, because that is what every usage source counts by (and what the
free-tier job uses: one notion of "usage in an hour" across the billing jobs). Events that arrive
more than 65 minutes after their hour began miss that hour's report; the reconciliation finds
them (:meth:`SourceHourlyUsage.buckets`: per org and day, then per hour for the days that differ)
and bills them as corrections of that hour.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import oncely
from oncely_billing import db, migrations
from oncely_billing.meter import OrgHourUsage, StripeMetering, install_stripe_metering
from oncely_billing.usage import Granularity, UsageSource


class SourceHourlyUsage:
    """``(hour_start, hour_end) -> [OrgHourUsage]`` over a usage source and the org tables."""

    def __init__(self, app: oncely.App, source: UsageSource | Callable[[], UsageSource]) -> None:
        self.app = app
        self._source = source

    @property
    def source(self) -> UsageSource:
        if isinstance(self._source, UsageSource):
            return self._source
        self._source = self._source()
        return self._source

    def __call__(self, start: datetime, end: datetime) -> list[OrgHourUsage]:
        """Usage per org in ``[start, end)`` (one hour for the hourly job)."""
        totals: dict[str, list[int]] = {}
        customers: dict[str, str] = {}
        for rows in self.buckets(start, end, "hour").values():
            for row in rows:
                customers[row.org_id] = str(row.customer_id)
                total = totals.setdefault(row.org_id, [0, 0, 0])
                total[0] += row.traces
                total[1] += row.observations
                total[2] += row.scores
        return [OrgHourUsage(org_id, customers[org_id], t, o, s)
                for org_id, (t, o, s) in totals.items()]

    def buckets(self, start: datetime, end: datetime,
                granularity: Granularity) -> dict[int, list[OrgHourUsage]]:
        """Usage per org and bucket (UTC day or hour, keyed by its start in epoch ms) in
        ``[start, end)``: one query to the source. A project counts in a bucket it was not
        deleted before (for an hour: live at some point of it, as the hourly job counts)."""
        migrations.ensure_schema(self.app)  # the org and project tables
        counts = self.source.usage_by_project(start, end, granularity)
        dialect = db.sql_dialect(self.app)
        with db.connection(self.app) as conn:
            rows = db.fetch_all(conn, dialect, "stripe_billable_projects_since",
                                {"start": start.timestamp()})
        owner = {int(project): (str(org), str(customer), deleted)
                 for project, org, customer, deleted in rows}
        totals: dict[tuple[int, str], list[int]] = {}
        customers: dict[str, str] = {}
        for project, bucket, traces, observations, scores in zip(
                counts.project_id.tolist(), counts.bucket.tolist(), counts.traces.tolist(),
                counts.observations.tolist(), counts.scores.tolist(), strict=True):
            found = owner.get(int(project))
            if found is None:
                continue  # deleted, unknown, or its org has no Stripe customer
            org_id, customer_id, deleted = found
            if deleted is not None and float(deleted) <= bucket:
                continue  # deleted before this bucket began
            customers[org_id] = customer_id
            total = totals.setdefault((int(bucket) * 1000, org_id), [0, 0, 0])
            total[0] += int(traces)
            total[1] += int(observations)
            total[2] += int(scores)
        found_buckets: dict[int, list[OrgHourUsage]] = {}
        for (bucket_ms, org_id), (t, o, s) in sorted(totals.items()):
            found_buckets.setdefault(bucket_ms, []).append(
                OrgHourUsage(org_id, customers[org_id], t, o, s))
        return found_buckets

    def customers(self) -> dict[str, str]:
        """Every org's current Stripe customer id (to resend reset failures to the right one)."""
        dialect = db.sql_dialect(self.app)
        with db.connection(self.app) as conn:
            rows = db.fetch_all(conn, dialect, "stripe_org_customers", {})
        return {str(org): str(customer) for org, customer in rows}


def install_stripe_usage_metering(app: oncely.App, source: UsageSource,
                                  **options: Any) -> StripeMetering:
    """Register the hourly Stripe metering job on ``app``, reading usage from ``source``
    (options: ``config``, ``settings``, ``client``, ``cron``; see :class:`StripeMetering`)."""
    return install_stripe_metering(app, SourceHourlyUsage(app, source), **options)
