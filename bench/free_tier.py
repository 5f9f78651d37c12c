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

Then, on worker processes (``oncely worker``), each mode on a fresh store loaded with the same
dataset: the **single run** on one worker, and **fan-out** (``--fan-out`` chunks, 4 running at
once fleet-wide) on 1 and on 4 workers (``--fan-out-workers``): wall time from enqueue to the
run's end, for the first full run and the full recount, with the workers the chunks ran on.
The workers share a warp clock starting at the dataset's end (``ONCELY_CLOCK``).

Goals on 2 cores: incremental run <= 5 s, full recount <= 60 s, organization writes per
steady-state run <= organizations whose usage changed (the reference design rewrote all 50,000
every hour).

Output: a table, then one JSON document on stdout (and in ``--json-out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
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


# worker processes -----------------------------------------------------------------------------

_worker_app: list[Any] = []


def __getattr__(name: str) -> Any:
    """``bench.free_tier:app`` — the app of a worker process, built from its environment."""
    if name != "app":
        raise AttributeError(name)
    if not _worker_app:
        from oncely_billing import DuckDBUsageSource, MeteringSettings, build_app

        _worker_app.append(build_app(
            os.environ["ONCELY_DATABASE_URL"],
            usage_source=DuckDBUsageSource(os.environ["ONCELY_BENCH_USAGE"]),
            settings=MeteringSettings.from_env(enforce=True)))
    return _worker_app[0]


def start_workers(count: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for index in range(count):
        log = open(logs / f"worker-{index}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "oncely", "--app", "bench.free_tier:app", "worker"],
            cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 120
    while not all("worker.started" in (logs / f"worker-{i}.log").read_text(errors="replace")
                  for i in range(count)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            stop_workers(procs)
            raise RuntimeError(f"workers did not start; see {logs}")
        time.sleep(0.1)
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def runs_on_workers(url: str, usage: str, parts: int, workers: int,
                    logs: Path) -> dict[str, Any]:
    """The first full run and a full recount, each enqueued and run by ``workers`` processes."""
    from oncely.clock import clock_from_spec
    from oncely_billing import DuckDBUsageSource, MeteringSettings, build_app, metering_of
    from oncely_billing.fanout import CHUNK_TASK

    spec = f"warp:{END.isoformat()}:1:{time.time()}"
    env = {"ONCELY_DATABASE_URL": url, "ONCELY_BENCH_USAGE": usage, "ONCELY_CLOCK": spec,
           "ONCELY_METERING_FAN_OUT": str(parts), "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    app = build_app(url, usage_source=DuckDBUsageSource(usage), clock=clock_from_spec(spec),
                    settings=MeteringSettings(enforce=True, fan_out=parts))
    logs.mkdir(parents=True, exist_ok=True)
    procs = start_workers(workers, env, logs)
    figures: dict[str, Any] = {"mode": "fan-out" if parts >= 2 else "single",
                               "fan_out": parts, "workers": workers}
    try:
        for label, full in (("first_full_run", False), ("full_recount", True)):
            started = time.perf_counter()
            handle = app.enqueue_job(metering_of(app).thresholds_task, {"full": full},
                                     unique_key=f"bench-{label}")
            while not (job := handle.refresh()).state.finished:
                if time.perf_counter() - started > 3600:
                    raise RuntimeError(f"{label} did not finish within an hour")
                time.sleep(0.05)
            seconds = time.perf_counter() - started
            if job.state.value != "succeeded":
                raise RuntimeError(f"{label} ended {job.state}: {job.errors[-1].message}")
            chunk_jobs = set(job.result.get("chunk_jobs", ()))
            ran_on = {e.worker_id for e in app.read.executions(task=CHUNK_TASK, limit=1000)
                      if e.job_id in chunk_jobs}
            figures[label] = {"seconds": round(seconds, 2), "result": dict(job.result),
                              "chunk_workers": len(ran_on)}
            print(f"  {figures['mode']} ({parts} chunks) on {workers} worker(s), {label}: "
                  f"{seconds:.2f} s", file=sys.stderr)
    finally:
        stop_workers(procs)
        app.close()
    return figures


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


def bench_on_workers(name: str, fresh_url: Any, master: str, workdir: Path,
                     args: argparse.Namespace) -> list[dict[str, Any]]:
    """Single run and fan-out on worker processes, each mode on a fresh store."""
    modes = [(0, 1)] + [(args.fan_out, int(n)) for n in args.fan_out_workers.split(",") if n]
    rows = []
    for number, (parts, workers) in enumerate(modes):
        usage = str(workdir / f"usage-{name}-workers-{number}.duckdb")
        shutil.copyfile(master, usage)
        with fresh_url(number) as url:
            in_process(phase_load_store, url, usage)
            rows.append(runs_on_workers(url, usage, parts, workers,
                                        workdir / f"logs-{name}-{number}"))
        os.unlink(usage)
    return rows


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
        if store.get("on_workers"):
            console.print(workers_table(store))


def workers_table(store: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"single run vs fan-out on worker processes ({store['store']}): "
                        "seconds from enqueue to the run's end")
    for column in ("mode", "workers", "run", "seconds", "org writes", "emails", "chunks",
                   "chunk workers"):
        table.add_column(column, justify="right")
    for mode in store["on_workers"]:
        for label in ("first_full_run", "full_recount"):
            run = mode[label]
            result = run["result"]
            table.add_row(mode["mode"], str(mode["workers"]), label.replace("_", " "),
                          f"{run['seconds']:.2f}", str(result["org_rows_written"]),
                          str(result["notifications"]), str(result.get("fan_out", "-")),
                          str(run["chunk_workers"] or "-"))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--heavy-fraction", type=float, default=0.003)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--postgres-url")
    parser.add_argument("--json-out")
    parser.add_argument("--workdir", help="Where the files go (default: a temporary directory).")
    parser.add_argument("--fan-out", type=int, default=8, help="Chunks of a fanned-out run.")
    parser.add_argument("--fan-out-workers", default="1,4",
                        help="Worker processes for the fan-out rows (comma-separated counts); "
                             "empty: skip the runs on workers.")
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

                @contextlib.contextmanager
                def sqlite_url(number: int) -> Iterator[str]:
                    yield f"sqlite:///{workdir / f'workers-{number}.db'}"

                fresh_url: Any = sqlite_url
            elif name == "postgres":
                base = postgres_base(args)
                if base is None:
                    continue
                schema = f"oncely_bench_{uuid.uuid4().hex[:12]}"
                try:
                    report["stores"].append(bench_store(name, with_schema(base, schema), usage))
                finally:
                    drop_schema(base, schema)

                @contextlib.contextmanager
                def postgres_url(number: int, base: str = base) -> Iterator[str]:
                    schema = f"oncely_bench_{uuid.uuid4().hex[:12]}"
                    try:
                        yield with_schema(base, schema)
                    finally:
                        drop_schema(base, schema)

                fresh_url = postgres_url
            else:
                continue
            os.unlink(usage)
            if args.fan_out_workers:
                report["stores"][-1]["on_workers"] = bench_on_workers(
                    name, fresh_url, master, workdir, args)
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
