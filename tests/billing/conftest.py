"""Fixtures of the metering tests: stores, usage sources, a scenario with known answers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import oncely
from oncely.testing import FrozenClock
from oncely_billing import (
    DuckDBUsageSource,
    MeteringSettings,
    PlanLimits,
    SQLUsageSource,
    UsageSource,
    build_app,
    db,
    metering_of,
    models,
    seed,
)

NOW = datetime(2026, 3, 30, 10, 40, tzinfo=UTC)  # March 30: anchors 29-31 are the tricky ones
# Thresholds a hundred times smaller than the free plan's keep the datasets small.
SMALL = PlanLimits(included=500, notify_at=(500, 1000, 2000), block_at=2500)


class Events:
    """Writes usage events into a DuckDB usage file, in bulk."""

    def __init__(self, path: Path) -> None:
        import duckdb

        self.path = path
        conn = duckdb.connect(str(path))
        conn.execute(db.q("duckdb", "schema"))
        conn.close()

    def add(self, project_id: int, at: datetime, traces: int = 0, observations: int = 0,
            scores: int = 0, spread: timedelta = timedelta(hours=1)) -> None:
        import duckdb

        start = at.astimezone(UTC).replace(tzinfo=None)
        step = max(1, int(spread.total_seconds() * 1000) // max(1, traces + observations + scores))
        conn = duckdb.connect(str(self.path))
        try:
            for table, column, count in (("traces", "timestamp", traces),
                                         ("observations", "start_time", observations),
                                         ("scores", "timestamp", scores)):
                if count:
                    conn.execute(
                        f"INSERT INTO {table} (id, project_id, {column}) "
                        "SELECT i, $p, $t + to_milliseconds(i * $step) FROM range($n) r(i)",
                        {"p": project_id, "t": start, "step": step, "n": count},
                    )
        finally:
            conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'oncely.db'}"
    if not os.environ.get("ONCELY_TEST_POSTGRES_URL"):
        pytest.skip("ONCELY_TEST_POSTGRES_URL not set")
    url, _ = request.getfixturevalue("pg_schema")
    return str(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'oncely.db'}"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def events(tmp_path: Path) -> Events:
    return Events(tmp_path / "usage.duckdb")


def small_settings(**changes: Any) -> MeteringSettings:
    base = MeteringSettings(enforce=True, plans={"free": SMALL}, source_attempts=2,
                            source_base_delay=0.0, source_max_delay=0.0,
                            billing_url="https://app.test/org/{org_id}/billing")
    return base.with_(**changes)


def make_app(url: str, source: UsageSource | None, clock: FrozenClock, events: Events,
             **changes: Any) -> oncely.App:
    return build_app(url, usage_source=source or DuckDBUsageSource(events.path), clock=clock,
                     settings=small_settings(**changes))


@dataclass(frozen=True)
class Org:
    id: int
    name: str
    created: datetime
    events: list[tuple[int, datetime, int]]  # (project, at, traces)
    status: str | None = None
    deleted_project: int | None = None


def scenario_orgs() -> list[Org]:
    """Seven organizations, each a rule of the reference (usage in SMALL's units)."""
    mar = lambda day, hour=6: datetime(2026, 3, day, hour, tzinfo=UTC)  # noqa: E731
    return [
        # anchor 31 → cycle Feb 28 .. Mar 31: crosses 500
        Org(1, "Alpha", datetime(2025, 1, 31, tzinfo=UTC), [(11, mar(29), 600)]),
        # anchor 15: crosses 500, 1000 and 2000 in one run → one email, for 2000
        Org(2, "Bravo", datetime(2025, 6, 15, tzinfo=UTC), [(21, mar(20), 2100)]),
        # anchor 1: lands exactly on the block threshold
        Org(3, "Charlie", datetime(2024, 11, 1, tzinfo=UTC), [(31, mar(2), 2500)]),
        # paid: skipped whatever its usage
        Org(4, "Delta", datetime(2025, 2, 3, tzinfo=UTC), [(41, mar(10), 3000)], "active"),
        # anchor 30: a new cycle began today; yesterday's 800 belong to the previous one
        Org(5, "Echo", datetime(2025, 4, 30, tzinfo=UTC),
            [(51, mar(29), 800), (51, mar(30), 100)]),
        # a deleted project's 3000 must not count
        Org(6, "Foxtrot", datetime(2025, 8, 8, tzinfo=UTC),
            [(61, mar(25), 10), (62, mar(25), 3000)], deleted_project=62),
        # idle
        Org(7, "Golf", datetime(2025, 9, 9, tzinfo=UTC), []),
    ]


EXPECTED_AFTER_FIRST_RUN = {
    1: (600, "WARNING"), 2: (2100, "WARNING"), 3: (2500, "BLOCKED"), 4: (0, None),
    5: (100, None), 6: (10, None), 7: (0, None),
}
EXPECTED_NOTIFICATIONS = {(1, 500, "usage_warning"), (2, 2000, "usage_warning"),
                          (3, 2500, "ingestion_blocked")}


def load_scenario(app: oncely.App, events: Events) -> None:
    orgs = scenario_orgs()
    models.add_organizations(app, [
        models.Organization(o.id, o.name, o.created, subscription_status=o.status) for o in orgs
    ])
    projects = {(o.id, project) for o in orgs for project, _, _ in o.events}
    models.add_projects(app, [
        models.Project(project, org_id, f"p{project}", datetime(2025, 1, 1, tzinfo=UTC),
                       NOW - timedelta(days=1) if project == next(
                           o.deleted_project for o in orgs if o.id == org_id) else None)
        for org_id, project in sorted(projects)
    ])
    models.add_members(app, [
        member for o in orgs for member in (
            models.Member(o.id, f"owner@{o.name.lower()}.test", "OWNER", f"{o.name} Owner"),
            models.Member(o.id, f"admin@{o.name.lower()}.test", "ADMIN"),
            models.Member(o.id, f"dev@{o.name.lower()}.test", "MEMBER"),
            models.Member(o.id, f"viewer@{o.name.lower()}.test", "VIEWER"),
        )
    ])
    for o in orgs:
        for project, at, traces in o.events:
            # split like real traffic: traces, observations and scores all count
            events.add(project, at, traces=traces // 2,
                       observations=traces - traces // 2 - traces // 10, scores=traces // 10)


def state_of(app: oncely.App) -> dict[int, tuple[int, str | None]]:
    return {
        o.id: (status.cycle_usage, status.threshold_state)
        for o in scenario_orgs()
        for status in [models.org_status(app, o.id)]
    }


@pytest.fixture(params=["duckdb", "chdb", "sql"])
def source_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def scenario_app(store_url: str, source_kind: str, clock: FrozenClock, events: Events,
                 tmp_path: Path) -> Iterator[oncely.App]:
    """An app on each store with the scenario's data in each kind of usage source."""
    app = make_app(store_url, DuckDBUsageSource(events.path), clock, events)
    load_scenario(app, events)
    runtime = metering_of(app)
    if source_kind == "chdb":
        from oncely_billing.usage_clickhouse import ClickHouseUsageSource

        source = ClickHouseUsageSource.chdb(tmp_path / "chdb", attempts=1)
        seed.export_to_clickhouse(events.path, source)
        runtime.source = source
    elif source_kind == "sql":
        seed.copy_events_to_store(app, events.path)
        runtime.source = SQLUsageSource(app, attempts=1)
    yield app
    runtime.source.close()
    app.close()


WAITING = (oncely.JobState.SCHEDULED, oncely.JobState.AVAILABLE, oncely.JobState.RETRYABLE)


def advance_when_idle(clock: FrozenClock, jobs: Sequence[oncely.Job],
                      to: datetime | None = None) -> bool:
    """Move frozen time once none of ``jobs`` runs or is due: to ``to``, else to the next one's
    ``run_at``; whether they were idle. A claim a worker has in flight was made while nothing was
    due, so no lease it takes has expired by the time it commits; a jump while a job runs or
    waits for a claim could put its lease past its deadline, and the worker would drop it."""
    now = clock.now()
    if any(job.state == oncely.JobState.RUNNING or (job.state in WAITING and job.run_at <= now)
           for job in jobs):
        return False
    if to is None:
        upcoming = [job.run_at for job in jobs if job.state in WAITING]
        if not upcoming:
            return True
        to = min(upcoming)
    clock.advance(max(0.0, (to - now).total_seconds()))
    return True


def run_thresholds(app: oncely.App, **args: Any) -> Any:
    from oncely.testing import run_job

    result = run_job(metering_of(app).thresholds_task, lease_ttl=120, **args)
    assert result.state == oncely.JobState.SUCCEEDED, result.outcome.error
    return result.result


Factory = Callable[..., oncely.App]
