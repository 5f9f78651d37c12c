#!/usr/bin/env python3
"""What process isolation costs per job: no-op jobs with ``isolation="thread"`` and ``"process"``.

    python bench/isolation.py --store sqlite
    python bench/isolation.py --store postgres --jobs 1000 --concurrency 4 --rounds 3

For each isolation, ``--rounds`` times (alternating, so a change in the machine's load hits both),
enqueues ``--jobs`` no-ops (``bench.apps``: ``noop`` and ``noop_process``) into a fresh store and
runs one :class:`oncely.worker.Worker` in this process (maintenance off) until all have
succeeded. Prints, per isolation, the median of: the rate; wall time per job at the given
concurrency; CPU per job of the worker process (all threads, user + system); and CPU per job of
the child processes (read from the fork server, which reaps them: ``/proc/<pid>/stat`` cutime and
cstime, Linux). A table, then the same figures as JSON. The first process-isolated job of a run
also waits for the fork server to start: a warm-up job runs before the clock starts.

Each child imports this script's top level again (``multiprocessing`` prepares a child by
importing the main module), so it imports only what the fork server has loaded already (oncely);
``rich`` is imported in ``main()``. The ``oncely worker`` command has no such cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import oncely  # noqa: E402
from oncely.types import JobState  # noqa: E402
from oncely.worker import Worker  # noqa: E402

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TASKS = {"thread": "noop", "process": "noop_process"}


def succeeded(app: oncely.App) -> int:
    return sum(row.count for row in app.store.job_counts() if row.state == JobState.SUCCEEDED)


def forkserver_children_cpu() -> float:
    """CPU seconds of the fork server's reaped children so far (0 before it exists)."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[13]) + int(fields[14])) / ticks  # cutime, cstime


def wait_for(app: oncely.App, count: int) -> None:
    while succeeded(app) < count:
        time.sleep(0.05)


def measure(args: argparse.Namespace, url: str, isolation: str) -> dict[str, Any]:
    from bench import apps

    app = oncely.App(url, settings=oncely.Settings(poll_interval=0.05))
    app.tasks = dict(apps.app.tasks)
    app.migrate()
    worker = Worker(app, concurrency=args.concurrency, maintenance=False)
    worker.start()
    try:
        app.enqueue_job(TASKS[isolation], {})  # warm-up: the fork server starts here
        wait_for(app, 1)
        app.enqueue_many(TASKS[isolation], [{} for _ in range(args.jobs)])
        wall, cpu, children = time.perf_counter(), time.process_time(), forkserver_children_cpu()
        wait_for(app, args.jobs + 1)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        children = forkserver_children_cpu() - children
    finally:
        worker.stop(timeout=30)
        app.store.close()
    return {"isolation": isolation, "jobs_per_s": args.jobs / wall,
            "wall_ms_per_job": wall * 1e3 / args.jobs,
            "worker_cpu_us_per_job": cpu * 1e6 / args.jobs,
            "children_cpu_us_per_job": children * 1e6 / args.jobs}


def one_run(args: argparse.Namespace, isolation: str) -> dict[str, Any]:
    if args.store == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            return measure(args, f"sqlite:///{folder}/bench.db", isolation)
    import psycopg

    schema = f"oncely_bench_{uuid.uuid4().hex[:12]}"
    try:
        return measure(args, f"{args.postgres_url}?schema={schema}", isolation)
    finally:
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", choices=("sqlite", "postgres"), required=True)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    args = p.parse_args()
    from rich.console import Console
    from rich.table import Table

    runs: dict[str, list[dict[str, Any]]] = {"thread": [], "process": []}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for isolation in runs:
            runs[isolation].append(one_run(args, isolation))
    figures = ("jobs_per_s", "wall_ms_per_job", "worker_cpu_us_per_job", "children_cpu_us_per_job")
    medians = {isolation: {f: round(statistics.median(r[f] for r in done), 1) for f in figures}
               for isolation, done in runs.items()}
    table = Table(title=f"{args.jobs} no-op jobs, {args.store}, one worker with "
                        f"{args.concurrency} threads, median of {args.rounds}")
    table.add_column("figure")
    for isolation in runs:
        table.add_column(isolation, justify="right")
    for figure in figures:
        table.add_row(figure, *(f"{medians[i][figure]:,}" for i in runs))
    Console().print(table)
    print(json.dumps({"store": args.store, "jobs": args.jobs, "concurrency": args.concurrency,
                      "rounds": args.rounds, "cpu_count": os.cpu_count(),
                      "python": sys.version.split()[0], "load_before": load_before,
                      "load_after": os.getloadavg(), "median": medians, "runs": runs},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
