"""Benchmark of the free-tier threshold job at scale: ``python bench/free_tier.py --orgs 50000``.

For each store (SQLite, and PostgreSQL when reachable) it measures, on the synthetic dataset of
``oncely metering seed`` (events in DuckDB):

* **dataset build**: the events in DuckDB (shared by the stores) and the job-store load;
* **first full run**: the very first run, which recounts every current cycle;
* **incremental runs**: two hourly runs, each after one more hour of events was appended;
* **full recount**: the nightly reconcile (``full=True``) on a warm rollup;

and for every run: wall time, rows written (organizations and rollup rows), usage-source
queries, the organizations whose usage really changed (recounted independently from the events
of the hour), and the peak memory (max RSS) of the process that ran it. Each phase runs in its
own process (``spawn``), so every peak is that phase's own. The job runs in-process through
``oncely.testing.run_job``, as ``oncely metering run-thresholds`` does.

Goals on 2 cores: incremental run <= 5 s, full recount <= 60 s, organization writes per
steady-state run <= organizations whose usage changed (the reference design rewrote all 50,000
every hour).

Output: a table, then one JSON document on stdout (and in ``--json-out``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

END = datetime(2026, 3, 30, 10, 35, tzinfo=UTC)  # a :35 slot; reconcile_hour (3) is past


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# phases, each run in a fresh process ------------------------------------------------------------

def phase_build_usage(path: str, orgs: int, seed: int, heavy_fraction: float) -> dict[str, Any]:
    from oncely_billing import seed as seeding

    started = time.perf_counter()
    seeding.build_usage(path, orgs=orgs, seed=seed, end=END, days=32,
                        heavy_fraction=heavy_fraction)
    seconds = time.perf_counter() - started
    report = seeding.summary(path, END)
    return {"seconds": round(seconds, 2), "events": report.events, "orgs": report.orgs,
            "projects": report.projects, "deleted_projects": report.deleted_projects,
            "paid_orgs": report.paid_orgs, "anchor_days": report.anchor_days,
            "file_mb": round(os.path.getsize(path) / 2**20, 1), "peak_mb": peak_mb()}


def make_app(url: str, usage: str, now: datetime) -> Any:
    from oncely.testing import FrozenClock
    from oncely_billing import DuckDBUsageSource, MeteringSettings, build_app

    settings = MeteringSettings(enforce=True)
    return build_app(url, usage_source=DuckDBUsageSource(usage), clock=FrozenClock(now),
                     settings=settings)


def phase_load_store(url: str, usage: str) -> dict[str, Any]:
    from oncely_billing import seed as seeding

    app = make_app(url, usage, END)
    started = time.perf_counter()
    seeding.load_store(app, usage)
    seconds = time.perf_counter() - started
    app.close()
    return {"seconds": round(seconds, 2), "peak_mb": peak_mb()}


def phase_run(url: str, usage: str, now_iso: str, full: bool) -> dict[str, Any]:
    from oncely.testing import run_job
    from oncely_billing import metering_of

    app = make_app(url, usage, datetime.fromisoformat(now_iso))
    task = metering_of(app).thresholds_task
    metering_of(app).ensure_schema()  # open and migrate outside the timed part
    started = time.perf_counter()
    outcome = run_job(task, lease_ttl=3600, full=full)
    seconds = time.perf_counter() - started
    app.close()
    if outcome.state.value != "succeeded":
        raise RuntimeError(f"run failed: {outcome.job.errors[-1].message}")
    result = dict(outcome.result)
    return {"seconds": round(seconds, 2), "result": result, "peak_mb": peak_mb()}


def phase_append_hour(usage: str, start_iso: str) -> dict[str, Any]:
    """Append one hour of events; count the free organizations whose usage it changes."""
    import duckdb

    from oncely_billing import seed as seeding

    start = datetime.fromisoformat(start_iso)
    end = start + timedelta(hours=1)
    added = seeding.append_events(usage, start, end)
    conn = duckdb.connect(usage, read_only=True)
    changed = conn.execute("""
        SELECT count(DISTINCT p.org_id) FROM (
            SELECT project_id FROM traces WHERE timestamp >= $lo AND timestamp < $hi UNION ALL
            SELECT project_id FROM observations WHERE start_time >= $lo AND start_time < $hi
            UNION ALL
            SELECT project_id FROM scores WHERE timestamp >= $lo AND timestamp < $hi) e
        JOIN seed_projects p ON p.project_id = e.project_id AND p.deleted_at IS NULL
        JOIN seed_orgs o ON o.org_id = p.org_id AND NOT o.paid""",
        {"lo": start.replace(tzinfo=None), "hi": end.replace(tzinfo=None)}).fetchone()[0]
    conn.close()
    return {"events": added, "free_orgs_with_new_usage": int(changed)}


def in_process(function: Any, *args: Any) -> Any:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


# stores ---------------------------------------------------------------------------------------

def postgres_base(args: argparse.Namespace) -> str | None:
    url = (args.postgres_url or os.environ.get("ONCELY_BENCH_POSTGRES_URL")
           or os.environ.get("ONCELY_TEST_POSTGRES_URL")
           or "postgresql://postgres@127.0.0.1:5432/test")
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception as exc:  # any failure means: skip this store
        print(f"PostgreSQL at {url} unreachable ({exc}); skipping it", file=sys.stderr)
        return None
    return url


def with_schema(url: str, schema: str) -> str:
    return url + ("&" if "?" in url else "?") + f"schema={schema}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def bench_store(name: str, url: str, usage: str) -> dict[str, Any]:
    figures: dict[str, Any] = {"store": name}
    figures["store_load"] = in_process(phase_load_store, url, usage)
    print(f"[{name}] store loaded in {figures['store_load']['seconds']} s", file=sys.stderr)
    figures["first_full_run"] = in_process(phase_run, url, usage, END.isoformat(), False)
    print(f"[{name}] first full run {figures['first_full_run']['seconds']} s", file=sys.stderr)
    incremental = []
    for hour in (1, 2):
        start = END + timedelta(hours=hour - 1)
        appended = in_process(phase_append_hour, usage, start.isoformat())
        run = in_process(phase_run, url, usage, (start + timedelta(hours=1)).isoformat(), False)
        run["appended"] = appended
        incremental.append(run)
        print(f"[{name}] incremental run {hour}: {run['seconds']} s", file=sys.stderr)
    figures["incremental_runs"] = incremental
    later = (END + timedelta(hours=2, minutes=10)).isoformat()
    figures["full_recount"] = in_process(phase_run, url, usage, later, True)
    print(f"[{name}] full recount {figures['full_recount']['seconds']} s", file=sys.stderr)
    return figures


# output ---------------------------------------------------------------------------------------

def row(label: str, run: dict[str, Any]) -> list[str]:
    result = run["result"]
    changed = run.get("appended", {}).get("free_orgs_with_new_usage", "")
    return [label, f"{run['seconds']:.2f}", str(result["org_rows_written"]),
            str(result["rollup_upserted"] + result["rollup_deleted"]), str(changed),
            str(result["source_queries"]), str(result["notifications"]), f"{run['peak_mb']:.0f}"]


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    build = report["dataset"]
    console = Console(stderr=False, width=150)
    console.print(f"dataset: {build['orgs']:,} orgs, {build['projects']:,} projects "
                  f"({build['deleted_projects']:,} deleted), {build['paid_orgs']:,} paid, "
                  f"{build['events']:,} events over 32 days, anchors on {build['anchor_days']} "
                  f"days; built in {build['seconds']:.1f} s ({build['file_mb']:.0f} MB DuckDB, "
                  f"peak {build['peak_mb']:.0f} MB)")
    for store in report["stores"]:
        table = Table(title=f"free-tier job on {store['store']} + DuckDB "
                            f"(store load {store['store_load']['seconds']:.1f} s)")
        for column in ("run", "seconds", "org writes", "rollup writes",
                       "free orgs w/ new usage", "usage queries", "emails", "peak MB"):
            table.add_column(column, justify="right")
        table.add_row(*row("first full run", store["first_full_run"]))
        for number, run in enumerate(store["incremental_runs"], start=1):
            table.add_row(*row(f"incremental #{number}", run))
        table.add_row(*row("full recount", store["full_recount"]))
        console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--heavy-fraction", type=float, default=0.003)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--postgres-url")
    parser.add_argument("--json-out")
    parser.add_argument("--workdir", help="Where the files go (default: a temporary directory).")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="oncely-free-tier-"))
    workdir.mkdir(parents=True, exist_ok=True)
    master = str(workdir / "usage.duckdb")
    report: dict[str, Any] = {
        "orgs": args.orgs, "seed": args.seed, "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "load_before": os.getloadavg(), "stores": [],
    }
    try:
        print(f"building the dataset for {args.orgs:,} organizations ...", file=sys.stderr)
        report["dataset"] = in_process(phase_build_usage, master, args.orgs, args.seed,
                                       args.heavy_fraction)
        for name in args.stores.split(","):
            usage = str(workdir / f"usage-{name}.duckdb")
            shutil.copyfile(master, usage)  # each store gets the same untouched events
            if name == "sqlite":
                report["stores"].append(bench_store(name, f"sqlite:///{workdir / 'oncely.db'}",
                                                    usage))
            elif name == "postgres":
                base = postgres_base(args)
                if base is None:
                    continue
                schema = f"oncely_bench_{uuid.uuid4().hex[:12]}"
                try:
                    report["stores"].append(bench_store(name, with_schema(base, schema), usage))
                finally:
                    drop_schema(base, schema)
            os.unlink(usage)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["load_after"] = os.getloadavg()
    print_table(report)
    document = json.dumps(report, indent=2, default=str)
    print(document)
    if args.json_out:
        Path(args.json_out).write_text(document + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
