#!/usr/bin/env python3
"""pgqueuer driven the way ``throughput.py`` drives oncely, for side-by-side ratios.

pgqueuer is not a dependency of oncely: run this from a scratch virtualenv of its own,

    python3 -m venv /tmp/pgq && /tmp/pgq/bin/pip install pgqueuer asyncpg
    /tmp/pgq/bin/python bench/peer_pgqueuer.py --batch-size 10     # pgqueuer's default
    /tmp/pgq/bin/python bench/peer_pgqueuer.py --batch-size 100

alternating with ``python bench/throughput.py --store postgres --workers 1 --e2e-concurrency
defaults,128 --skip limits,latency --single-jobs 500`` on the same machine, and compare ratios of
one session, never absolute figures of different days. Each run works in a database of its own,
created and dropped here: ``--single`` jobs enqueued one call each, then ``--jobs`` in lists of
``--chunk``, then one ``QueueManager`` drains them all with a no-op entrypoint (``run`` in drain
mode with ``--batch-size``); the drain rate counts from ``run`` until the queue is empty, its
start-up included. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
from pgqueuer.db import AsyncpgDriver
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    name = f"pgqueuer_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = args.postgres_url.rsplit("/", 1)[0] + f"/{name}"
    result: dict[str, Any] = {"peer": "pgqueuer", "jobs": args.jobs, "single": args.single,
                              "batch_size": args.batch_size}
    try:
        conn = await asyncpg.connect(url)
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        if args.single:
            started = time.perf_counter()
            for _ in range(args.single):
                await queries.enqueue(["noop"], [None], [0])
            result["enqueue_single_per_s"] = args.single / (time.perf_counter() - started)
        started, left = time.perf_counter(), args.jobs
        while left:
            n = min(args.chunk, left)
            await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
            left -= n
        result["enqueue_batch_per_s"] = args.jobs / (time.perf_counter() - started)

        worker_conn = await asyncpg.connect(url)
        manager = QueueManager(Queries(AsyncpgDriver(worker_conn)))

        @manager.entrypoint("noop")
        async def noop(job: Any) -> None:
            return None

        started = time.perf_counter()
        await manager.run(batch_size=args.batch_size, mode=QueueExecutionMode.drain,
                          dequeue_timeout=timedelta(seconds=0.2))
        elapsed = time.perf_counter() - started
        remaining = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        result["processed_per_s"] = (args.jobs + args.single - remaining) / elapsed
        result["left_in_queue"] = remaining
        await worker_conn.close()
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20000, help="jobs enqueued in lists, then drained")
    p.add_argument("--single", type=int, default=500, help="jobs enqueued one call each first")
    p.add_argument("--chunk", type=int, default=5000, help="jobs per batched enqueue call")
    p.add_argument("--batch-size", type=int, default=10, help="QueueManager.run batch_size")
    p.add_argument("--postgres-url", default=DEFAULT_URL, help="a database this role may "
                   "create databases from")
    args = p.parse_args()
    result = asyncio.run(measure(args))
    rows = [("enqueue, one call each", result.get("enqueue_single_per_s")),
            ("enqueue, batched", result["enqueue_batch_per_s"]),
            (f"processed, batch_size={args.batch_size}", result["processed_per_s"])]
    print(f"pgqueuer, {args.jobs} no-op jobs")
    for label, value in rows:
        if value is not None:
            print(f"  {label:<32} {value:>10,.0f} jobs/s")
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
