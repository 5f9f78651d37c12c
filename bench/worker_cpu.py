#!/usr/bin/env python3
"""CPU time one worker process spends per no-op job, measured inside that process.

    python bench/worker_cpu.py --store postgres --jobs 20000 --concurrency 64
    python bench/worker_cpu.py --store sqlite --profile      # adds a yappi CPU profile

Enqueues ``--jobs`` no-op jobs into a fresh store, runs one :class:`oncely.worker.Worker` in this
process (maintenance off) until they have all succeeded, and prints the CPU time per job
(user + system, every thread but the benchmark's own, whose polling for the end is left out)
and the rate, as a table and JSON. Unlike the end-to-end rates of
``throughput.py`` this figure hardly moves with other load on the machine, so it is the one to
compare when changing the worker's hot path. ``--profile`` (``pip install yappi``) adds the
functions with the most CPU time of their own; profiling makes everything several times slower.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import oncely  # noqa: E402
from oncely.types import JobState  # noqa: E402

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def succeeded(app: oncely.App) -> int:
    return sum(row.count for row in app.store.job_counts() if row.state == JobState.SUCCEEDED)


def worker_threads_cpu() -> float:
    """CPU seconds of every thread but this one (which only polls for the end): the worker's."""
    return time.process_time() - time.thread_time()


def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    app = oncely.App(url)

    @app.task(name="noop")
    def noop(ctx: oncely.JobContext) -> None:
        return None

    app.migrate()
    app.enqueue_many("noop", [{} for _ in range(args.jobs)])
    worker = app.worker(concurrency=args.concurrency, maintenance=False)
    if args.profile:
        import yappi

        yappi.set_clock_type("cpu")
        yappi.start()
    wall, cpu = time.perf_counter(), worker_threads_cpu()
    worker.start()
    while succeeded(app) < args.jobs:
        time.sleep(0.1)
    wall, cpu = time.perf_counter() - wall, worker_threads_cpu() - cpu
    worker.stop(timeout=30)
    result: dict[str, Any] = {
        "store": args.store, "jobs": args.jobs, "concurrency": args.concurrency,
        "cpu_us_per_job": round(cpu * 1e6 / args.jobs, 1),
        "jobs_per_s": round(args.jobs / wall, 1),
    }
    if args.profile:
        yappi.stop()
        stats = sorted(yappi.get_func_stats(), key=lambda s: s.tsub, reverse=True)[: args.top]
        result["profile_top_self"] = [
            {"function": f"{Path(s.module).name}:{s.lineno} {s.name}", "calls": s.ncall,
             "self_s": round(s.tsub, 3), "total_s": round(s.ttot, 3)} for s in stats
        ]
    app.store.close()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", choices=("sqlite", "postgres"), required=True)
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    p.add_argument("--profile", action="store_true", help="yappi CPU profile (pip install yappi)")
    p.add_argument("--top", type=int, default=25, help="profile rows to print")
    args = p.parse_args()
    if args.store == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            result = measure(args, f"sqlite:///{folder}/bench.db")
    else:
        import psycopg

        schema = f"oncely_bench_{uuid.uuid4().hex[:12]}"
        try:
            result = measure(args, f"{args.postgres_url}?schema={schema}")
        finally:
            with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    table = Table(title=f"one worker, {args.jobs} no-op jobs, {args.concurrency} threads")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("CPU per job (the worker's threads)", f"{result['cpu_us_per_job']:,} µs")
    table.add_row("rate", f"{result['jobs_per_s']:,} jobs/s")
    for row in result.get("profile_top_self", []):
        table.add_row(row["function"], f"{row['self_s']} s self / {row['total_s']} s total")
    Console().print(table)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
