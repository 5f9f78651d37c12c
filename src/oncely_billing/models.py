"""The metering data model on the job store, as typed rows, and bulk writes of them.

Tables (``sql/<dialect>/0001_initial.sql``): ``metering_organizations`` (plan and subscription
fields, Stripe customer id, billing-cycle anchor, created_at, current-cycle usage, threshold
state, updated_at), ``metering_projects`` (deleted_at), ``metering_members`` (email, role),
``metering_notification_outbox``, ``metering_usage_daily`` (per organization and UTC day),
``metering_state``, ``metering_chunk_failures`` and the optional event tables of the ``sql``
usage source.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import oncely
from oncely_billing import db
from oncely_billing.cycle import Cycle, cycle_for_day
from oncely_billing.errors import UnknownOrganization
from oncely_billing.migrations import ensure_schema, run_script

PAID_STATUSES = ("active", "trialing", "past_due")
ROLES = ("OWNER", "ADMIN", "MEMBER", "VIEWER")
BATCH = 5000


@dataclass(frozen=True)
class Organization:
    id: int
    name: str
    created_at: datetime
    plan: str = "free"
    subscription_status: str | None = None
    plan_override: str | None = None
    external_billing: str | None = None
    stripe_customer_id: str | None = None
    billing_cycle_anchor: datetime | None = None

    @property
    def paid(self) -> bool:
        return (self.subscription_status in PAID_STATUSES or self.plan_override is not None
                or self.external_billing is not None)

    def row(self) -> list[Any]:
        anchor = self.billing_cycle_anchor
        return [self.id, self.name, self.plan, self.subscription_status, self.plan_override,
                self.external_billing, self.stripe_customer_id,
                anchor.timestamp() if anchor else None, self.created_at.timestamp()]


@dataclass(frozen=True)
class Project:
    id: int
    org_id: int
    name: str
    created_at: datetime
    deleted_at: datetime | None = None

    def row(self) -> list[Any]:
        deleted = self.deleted_at.timestamp() if self.deleted_at else None
        return [self.id, self.org_id, self.name, self.created_at.timestamp(), deleted]


@dataclass(frozen=True)
class Member:
    org_id: int
    email: str
    role: str
    name: str | None = None
    created_at: datetime = datetime(2020, 1, 1, tzinfo=UTC)

    def row(self) -> list[Any]:
        return [self.org_id, self.email, self.name, self.role, self.created_at.timestamp()]


ORG_COLUMNS = ("id", "name", "plan", "subscription_status", "plan_override", "external_billing",
               "stripe_customer_id", "billing_cycle_anchor", "created_at")
PROJECT_COLUMNS = ("id", "org_id", "name", "created_at", "deleted_at")
MEMBER_COLUMNS = ("org_id", "email", "name", "role", "created_at")


def insert_rows(app: oncely.App, query: str, columns: Sequence[str],
                rows: Iterable[Sequence[Any]], batch: int = BATCH) -> int:
    """Insert rows (lists in ``columns`` order) with one set-based statement per batch."""
    ensure_schema(app)
    dialect = db.sql_dialect(app)
    now = app.clock.now().timestamp()
    materialized = list(rows)
    with db.connection(app) as conn:
        for chunk in db.chunks(materialized, batch):
            db.run(conn, dialect, query, {**db.batch_params(dialect, columns, chunk), "now": now})
    return len(materialized)


def add_organizations(app: oncely.App, orgs: Iterable[Organization]) -> int:
    return insert_rows(app, "orgs_insert_batch", ORG_COLUMNS, (org.row() for org in orgs))


def add_projects(app: oncely.App, projects: Iterable[Project]) -> int:
    return insert_rows(app, "projects_insert_batch", PROJECT_COLUMNS, (p.row() for p in projects))


def add_members(app: oncely.App, members: Iterable[Member]) -> int:
    return insert_rows(app, "members_insert_batch", MEMBER_COLUMNS, (m.row() for m in members))


def clear(app: oncely.App) -> None:
    """Delete every metering row (organizations, usage, outbox, state) from the job store."""
    ensure_schema(app)
    with db.connection(app) as conn:
        run_script(conn, db.sql_dialect(app), "metering_data_clear")


def count_organizations(app: oncely.App) -> int:
    ensure_schema(app)
    with db.connection(app) as conn:
        row = db.fetch_one(conn, db.sql_dialect(app), "orgs_count")
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class OrgStatus:
    """One organization as the free-tier job sees it (``oncely metering orgs show``)."""

    id: int
    name: str
    plan: str
    paid: bool
    subscription_status: str | None
    stripe_customer_id: str | None
    anchor_day: int
    cycle: Cycle
    recorded_cycle_start: date | None
    cycle_usage: int
    threshold_state: str | None
    state_changed_at: datetime | None
    usage_updated_at: datetime | None
    created_at: datetime | None


def org_status(app: oncely.App, org_id: int) -> OrgStatus:
    ensure_schema(app)
    dialect = db.sql_dialect(app)
    with db.connection(app) as conn:
        row = db.fetch_one(conn, dialect, "org_get", {"org_id": org_id})
    if row is None:
        raise UnknownOrganization(f"organization {org_id} does not exist")
    today = app.clock.now().date()
    return OrgStatus(
        id=int(row[0]), name=str(row[1]), plan=str(row[2]), paid=bool(row[16]),
        subscription_status=row[3], stripe_customer_id=row[6], anchor_day=int(row[9]),
        cycle=cycle_for_day(int(row[9]), today),
        recorded_cycle_start=None if row[10] is None else db.from_epoch_day(row[10]),
        cycle_usage=int(row[11]), threshold_state=row[12],
        state_changed_at=db.from_epoch(row[13]), usage_updated_at=db.from_epoch(row[14]),
        created_at=db.from_epoch(row[8]),
    )


def org_members(app: oncely.App, org_id: int) -> list[Member]:
    dialect = db.sql_dialect(app)
    with db.connection(app) as conn:
        rows = db.fetch_all(conn, dialect, "org_members", {"org_id": org_id})
    return [Member(org_id, str(row[0]), str(row[2]), row[1]) for row in rows]


def org_usage_days(app: oncely.App, org_id: int, since: date) -> list[tuple[date, int]]:
    dialect = db.sql_dialect(app)
    params = {"org_id": org_id, "since_day": db.epoch_day(since)}
    with db.connection(app) as conn:
        rows = db.fetch_all(conn, dialect, "org_usage_days", params)
    return [(db.from_epoch_day(row[0]), int(row[4])) for row in rows]


def set_billing(
    app: oncely.App, org_id: int, *, plan: str = "free", subscription_status: str | None = None,
    plan_override: str | None = None, external_billing: str | None = None,
) -> None:
    """Change an organization's billing fields (what a billing webhook would do).

    The change bumps the ingestion gate's generation in the same transaction, so every
    process's gate drops its cached answers within ``gate_refresh`` (1 s): paying unblocks
    everywhere at once. This process's gate forgets the organization at once too."""
    ensure_schema(app)
    dialect = db.sql_dialect(app)
    now = app.clock.now().timestamp()
    with db.connection(app) as conn:
        cursor = db.run(conn, dialect, "org_set_billing", {
            "org_id": org_id, "plan": plan, "subscription_status": subscription_status,
            "plan_override": plan_override, "external_billing": external_billing, "now": now,
        })
        if cursor.rowcount == 0:
            raise UnknownOrganization(f"organization {org_id} does not exist")
        db.run(conn, dialect, "gate_generation_bump", {"now": now})
    _forget_in_this_process(app, org_id)


def _forget_in_this_process(app: oncely.App, org_id: int) -> None:
    from oncely_billing.runtime import metering_of

    # the billing workloads may not be installed on this app: then there is no gate to tell
    with contextlib.suppress(oncely.ConfigError):
        metering_of(app).gate.invalidate([org_id])


def delete_project(app: oncely.App, project_id: int) -> bool:
    """Mark a project deleted now: its usage stops counting (all of it, from the next full
    recount; the days of the incremental window at once)."""
    ensure_schema(app)
    with db.connection(app) as conn:
        cursor = db.run(conn, db.sql_dialect(app), "project_delete",
                        {"project_id": project_id, "now": app.clock.now().timestamp()})
        return bool(cursor.rowcount)
