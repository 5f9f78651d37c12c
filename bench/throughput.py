#!/usr/bin/env python3
"""Throughput and start-latency figures for one oncely store.

    python bench/throughput.py --store sqlite
    python bench/throughput.py --store postgres --workers 1,4 --json-out pg.json

Measures enqueue rates (one job per transaction, and ``enqueue_many``), the end-to-end rate of
no-op jobs through real worker processes, the cost of queue controls (the same end-to-end run with
no control, a global ``max_running`` and a global rate limit, side by side), and the delay from
enqueue to handler start with one idle worker. Every measurement gets a fresh store (a temporary
SQLite file, or a PostgreSQL schema ``oncely_bench_<hex>`` that is dropped afterwards). Prints a
table, then the same figures as JSON. See ``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "src", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import oncely  # noqa: E402
from bench.apps import KEYS, PER_KEY, PER_KEY_TASK, register_per_key  # noqa: E402
from oncely.store.params import JobFilter  # noqa: E402
from oncely.types import Job, JobState  # noqa: E402

APP_PATH = "bench.apps:app"
TASK = "noop"
DEFAULT_WORKERS = {"sqlite": "1,2", "postgres": "1,4"}
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PAGE = 5000  # jobs per job_list page when reading results back

# Started as ``python -c LAUNCHER <parent pid> <argv...>``: the worker gets SIGTERM if this script
# dies without cleaning up (Linux), then becomes ``python -m oncely ...`` under the same pid.
LAUNCHER = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class BenchError(Exception):
    """A measurement could not be completed; the message says why."""


# stores -----------------------------------------------------------------------------------------


def with_query(url: str, **params: str) -> str:
    joiner = "&" if "?" in url else "?"
    return url + joiner + urlencode(params, quote_via=quote)


def plain_pg_url(url: str) -> str:
    """The URL without oncely's own parameters, for a direct psycopg connection."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("schema", "pool_max")]
    text = urlencode(query, quote_via=quote)  # libpq decodes %20, not "+"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, text, ""))


def _noop(ctx: oncely.JobContext) -> None:
    return None


class FreshStore:
    """A store of its own for one measurement, removed by :meth:`close`."""

    def __init__(self, kind: str, pg_url: str, tag: str, keep: bool = False) -> None:
        self.kind, self.keep, self.tag = kind, keep, tag
        self.pg_url = plain_pg_url(pg_url)
        if kind == "sqlite":
            self.dir = Path(tempfile.mkdtemp(prefix=f"oncely-bench-{tag}-"))
            self.url = f"sqlite:///{self.dir / 'oncely.db'}"
            self.schema = None
        else:
            self.dir = Path(tempfile.mkdtemp(prefix=f"oncely-bench-{tag}-"))  # worker logs
            self.schema = f"oncely_bench_{uuid.uuid4().hex[:12]}"
            self.url = with_query(pg_url, schema=self.schema)
        # The bench migrates each fresh store itself, before any worker starts, so neither this
        # app nor the workers' (bench/apps.py) depend on auto-migration.
        self.app = oncely.App(self.url, auto_migrate=False)
        self.app.task(name=TASK)(_noop)
        try:
            self.app.migrate()  # fails early if the server is unreachable
            self.app.store.check_schema()
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()
        if self.keep:
            return
        try:
            if self.schema is not None:
                import psycopg

                with psycopg.connect(self.pg_url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def all_jobs(self) -> list[Job]:
        """Every job in the store, through the store's own API (newest first)."""
        jobs: list[Job] = []
        before: int | None = None
        while True:
            page = self.app.store.job_list(JobFilter(limit=PAGE, before_id=before))
            if not page:
                return jobs
            jobs.extend(page)
            before = page[-1].id

    def finished_count(self) -> tuple[int, dict[str, int]]:
        counts: dict[str, int] = {}
        for row in self.app.store.job_counts():
            counts[str(row.state)] = counts.get(str(row.state), 0) + row.count
        return sum(v for k, v in counts.items() if JobState(k).finished), counts


@contextlib.contextmanager
def fresh_store(args: argparse.Namespace, tag: str) -> Iterator[FreshStore]:
    store = FreshStore(args.store, args.postgres_url, tag, keep=args.keep)
    try:
        yield store
    finally:
        store.close()


# worker processes -------------------------------------------------------------------------------

LIVE_POOLS: list[WorkerPool] = []


class WorkerPool:
    """Real ``oncely worker`` processes on one store; stopped with SIGTERM, killed if need be."""

    def __init__(
        self, url: str, logdir: Path, env: dict[str, str] | None = None, app_path: str = APP_PATH
    ) -> None:
        self.url, self.logdir, self.extra_env = url, logdir, dict(env or {})
        self.app_path = app_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.profilers: list[subprocess.Popen[bytes]] = []
        self.spawned_at: float | None = None  # wall clock (epoch seconds)
        LIVE_POOLS.append(self)

    def start(self, count: int, concurrency: int) -> None:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["ONCELY_DATABASE_URL"] = self.url
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        argv = ["-m", "oncely", "--app", self.app_path, "worker"]
        if concurrency:  # 0: the worker's defaults (no flag)
            argv += ["--concurrency", str(concurrency)]
        self.spawned_at = time.time()
        for index in range(count):
            log = open(self.logdir / f"worker-{index}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, str(os.getpid()), *argv],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            self.procs.append(proc)

    def profile(self, outdir: Path, label: str, rate: int, extra: list[str]) -> None:
        """Attach py-spy to every worker; each writes collapsed stacks when its worker exits."""
        exe = shutil.which("py-spy")
        if exe is None:
            raise BenchError("--profile-dir needs py-spy on PATH (pip install py-spy)")
        outdir.mkdir(parents=True, exist_ok=True)
        for index, proc in enumerate(self.procs):
            self._wait_exec(proc)
            out = outdir / f"{label}-worker{index}.txt"
            cmd = [
                exe,
                "record",
                "--pid",
                str(proc.pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--output",
                str(out),
                *extra,
            ]
            log = open(outdir / f"{label}-worker{index}.py-spy.log", "wb")  # noqa: SIM115
            self.profilers.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            log.close()

    def _wait_exec(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """Wait until the launcher has become the worker (py-spy must attach after exec)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                return  # no /proc: attach now and hope
            if argv[1:3] == [b"-m", b"oncely"]:
                time.sleep(0.05)  # let the new interpreter map itself
                return
            time.sleep(0.005)

    def log_tail(self, index: int, lines: int = 30) -> str:
        path = self.logdir / f"worker-{index}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check(self) -> None:
        for index, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None:
                raise BenchError(
                    f"worker {index} (pid {proc.pid}) exited with code {code}; its log ends:\n"
                    + self.log_tail(index)
                )

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """SIGTERM every worker, wait, SIGKILL what is left; returns exit codes and timing."""
        began = time.monotonic()
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        killed = 0
        for proc in self.procs:
            try:
                codes.append(proc.wait(max(0.1, timeout - (time.monotonic() - began))))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
                killed += 1
        for profiler in self.profilers:
            try:
                profiler.wait(60)
            except subprocess.TimeoutExpired:
                profiler.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    profiler.wait(10)
                if profiler.poll() is None:
                    profiler.kill()
        if self in LIVE_POOLS:
            LIVE_POOLS.remove(self)
        return {
            "exit_codes": codes,
            "killed": killed,
            "stop_seconds": round(time.monotonic() - began, 3),
        }

    def kill(self) -> None:
        for proc in [*self.procs, *self.profilers]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        if self in LIVE_POOLS:
            LIVE_POOLS.remove(self)


@contextlib.contextmanager
def worker_pool(
    args: argparse.Namespace, url: str, logdir: Path, env: dict[str, str] | None = None
) -> Iterator[WorkerPool]:
    pool = WorkerPool(url, logdir, env, app_path=args.app)
    try:
        yield pool
    finally:
        pool.kill()  # a no-op after a clean stop()


def kill_all_workers() -> None:
    for pool in list(LIVE_POOLS):
        pool.kill()


def wait_drained(
    store: FreshStore, total: int, pool: WorkerPool, timeout: float, poll: float = 0.5
) -> None:
    """Wait until ``total`` jobs have finished (in any final state). Polls slowly: a count over
    20,000 SQLite rows costs ~10 ms of a core the workers would otherwise have, and the figures
    come from the store's timestamps, not from when this loop noticed."""
    deadline = time.monotonic() + timeout
    while True:
        done, counts = store.finished_count()
        if done >= total:
            return
        pool.check()
        if time.monotonic() >= deadline:
            raise BenchError(f"only {done}/{total} jobs finished within {timeout:.0f} s: {counts}")
        time.sleep(poll)


def wait_registered(store: FreshStore, count: int, pool: WorkerPool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(store.app.store.worker_list()) < count:
        pool.check()
        if time.monotonic() >= deadline:
            raise BenchError(f"{count} worker(s) did not register within {timeout:.0f} s")
        time.sleep(0.05)


# measurements -----------------------------------------------------------------------------------


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def enqueue_batch(store: FreshStore, total: int, batch: int, task: str = TASK) -> float:
    """Seconds to enqueue ``total`` no-op jobs with enqueue_many, ``batch`` per call (jobs of
    the per-key task get one of ``KEYS`` keys each, in turn)."""
    began = time.perf_counter()
    left = total
    while left > 0:
        size = min(batch, left)
        if task == PER_KEY_TASK:
            store.app.enqueue_many(task, ({"key": n % KEYS} for n in range(left, left - size, -1)))
        else:
            store.app.enqueue_many(task, ({} for _ in range(size)))
        left -= size
    return time.perf_counter() - began


def measure_enqueue(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_store(args, "enqueue") as store:
        store.app.enqueue(TASK)  # warm up: connections, prepared statements
        began = time.perf_counter()
        for _ in range(args.single_jobs):
            store.app.enqueue(TASK)
        single = time.perf_counter() - began
        batch = enqueue_batch(store, args.jobs, args.batch_size)
    return {
        "single": {
            "jobs": args.single_jobs,
            "seconds": round(single, 3),
            "jobs_per_s": rate(args.single_jobs, single),
        },
        "batch": {
            "jobs": args.jobs,
            "batch_size": args.batch_size,
            "seconds": round(batch, 3),
            "jobs_per_s": rate(args.jobs, batch),
        },
    }


def verify(jobs: list[Job], expected: int) -> dict[str, Any]:
    by_state: dict[str, int] = {}
    for job in jobs:
        by_state[str(job.state)] = by_state.get(str(job.state), 0) + 1
    succeeded = by_state.get(str(JobState.SUCCEEDED), 0)
    repeated = sum(1 for job in jobs if job.attempt != 1)
    with_errors = sum(1 for job in jobs if job.errors)
    return {
        "states": by_state,
        "succeeded": succeeded,
        "attempts_not_1": repeated,
        "jobs_with_errors": with_errors,
        "exactly_once": succeeded == expected == len(jobs) and repeated == 0 and with_errors == 0,
    }


def declare_limit(store: FreshStore, limit: str, workers: int, concurrency: int) -> str:
    """Put one control on the jobs' queue (``default``), or on their task, before any worker
    starts; returns what it is. The workers' app declares no queue, so they keep it (and the
    same task limit). The limits are set well above what the fleet can reach, so the run
    measures what enforcing them costs, not throttling."""
    from oncely.controls import register_controls

    if limit == "max_running":
        settings = oncely.Settings()
        # every job the fleet may hold: each worker's threads and its prefetch buffer
        running = workers * ((concurrency or settings.concurrency) + settings.prefetch)
        store.app.queue("default", max_running=running)
        shown = f"max_running={running}"
    elif limit == "rate":
        store.app.queue("default", limit=(1_000_000, 1))
        shown = "limit=(1000000, 1 s)"
    elif limit == "max_per_key":
        register_per_key(store.app)
        shown = f"max_per_key={PER_KEY['max_per_key']:,} ({KEYS} keys)"
    else:
        return "none"
    register_controls(store.app.runtime)
    return shown


def measure_end_to_end(
    args: argparse.Namespace,
    workers: int,
    limit: str = "none",
    jobs: int | None = None,
    concurrency: int | None = None,
) -> dict[str, Any]:
    jobs = jobs or args.jobs
    concurrency = args.concurrency if concurrency is None else concurrency
    with fresh_store(args, f"e2e-w{workers}-c{concurrency}-{limit}") as store:
        control = declare_limit(store, limit, workers, concurrency)
        per_key = limit == "max_per_key"
        enqueue_seconds = enqueue_batch(store, jobs, args.batch_size,
                                        PER_KEY_TASK if per_key else TASK)
        env = {"ONCELY_BENCH_PER_KEY": "1"} if per_key else None
        with worker_pool(args, store.url, store.dir, env) as pool:
            pool.start(workers, concurrency)
            if args.profile_dir:
                pool.profile(
                    Path(args.profile_dir),
                    f"{args.store}-w{workers}-c{concurrency}",
                    args.profile_rate,
                    args.profile_args.split(),
                )
            drained_seen = None
            try:
                wait_drained(store, jobs, pool, args.timeout)
                drained_seen = time.time()
            finally:
                stopped = pool.stop(args.stop_timeout)
        assert pool.spawned_at is not None
        done = store.all_jobs()
    checks = verify(done, jobs)
    started = [j.started_at.timestamp() for j in done if j.started_at is not None]
    finished = [j.finished_at.timestamp() for j in done if j.finished_at is not None]
    if not started or not finished:
        raise BenchError("no job recorded started_at/finished_at")
    first, last = min(started), max(finished)
    span, wall = last - first, last - pool.spawned_at
    return {
        "workers": workers,
        "concurrency": concurrency,
        "jobs": jobs,
        "limit": control,
        "enqueue_batch_seconds": round(enqueue_seconds, 3),
        "store_span_seconds": round(span, 3),
        "jobs_per_s": rate(len(finished), span),
        "wall_seconds": round(wall, 3),
        "wall_jobs_per_s": rate(len(finished), wall),
        "startup_seconds": round(first - pool.spawned_at, 3),
        "drain_detected_after_seconds": round((drained_seen or last) - pool.spawned_at, 3),
        **checks,
        **stopped,
    }


def measure_e2e_rounds(
    args: argparse.Namespace, doc: dict[str, Any], console: Console, workers: int,
    concurrency: int,
) -> dict[str, Any] | None:
    """``--e2e-rounds`` end-to-end runs of one shape; the run with the median rate stands for
    them, with every round's rate beside it (other work on a small machine moves single runs)."""
    runs = []
    for round_no in range(1, args.e2e_rounds + 1):
        shape = concurrency or "defaults"
        name = f"end-to-end W={workers} C={shape} ({round_no}/{args.e2e_rounds})"
        result = run_part(
            doc, name,
            functools.partial(measure_end_to_end, args, workers, concurrency=concurrency),
            console,
        )
        if result is None:
            continue
        if not result["exactly_once"]:
            doc["problems"].append(
                f"{name}: jobs did not all succeed exactly once: {result['states']}"
            )
        runs.append(result)
    if not runs:
        return None
    ordered = sorted(runs, key=lambda run: run["jobs_per_s"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["jobs_per_s_runs"] = [run["jobs_per_s"] for run in runs]
    median["exactly_once"] = all(run["exactly_once"] for run in runs)
    return median


LIMITS = ("none", "max_running", "rate", "max_per_key")


def measure_limits(args: argparse.Namespace, doc: dict[str, Any], console: Console) -> None:
    """The same end-to-end run with each control in turn, in one invocation, every run on a
    fresh store; the variants alternate for ``--limit-rounds`` rounds so that drift in the
    machine's load hits them alike, and each reports its median."""
    workers = args.limit_workers or args.worker_counts[0]
    runs: dict[str, list[dict[str, Any]]] = {limit: [] for limit in LIMITS}
    for round_no in range(1, args.limit_rounds + 1):
        for limit in LIMITS:
            result = run_part(
                doc,
                f"limits {limit} W={workers} (round {round_no}/{args.limit_rounds})",
                functools.partial(measure_end_to_end, args, workers, limit, args.limit_jobs,
                                  args.limit_concurrency),
                console,
            )
            if result is None:
                continue
            runs[limit].append(result)
            if not result["exactly_once"]:
                doc["problems"].append(
                    f"limits {limit}: jobs did not all succeed exactly once: {result['states']}"
                )
    for limit in LIMITS:
        done = runs[limit]
        if not done:
            continue
        rates = sorted(run["jobs_per_s"] for run in done)
        doc["limits"].append({
            "limit": done[0]["limit"],
            "workers": workers,
            "concurrency": args.limit_concurrency,
            "jobs": args.limit_jobs,
            "rounds": len(done),
            "jobs_per_s": rates[len(rates) // 2],
            "jobs_per_s_runs": [run["jobs_per_s"] for run in done],
            "exactly_once": all(run["exactly_once"] for run in done),
        })


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def measure_latency(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Enqueue → start delay with one idle worker; ``mode`` is notify (default wake-ups) or
    poll (PostgreSQL LISTEN off: the worker finds work only at its poll interval)."""
    with fresh_store(args, f"latency-{mode}") as store:
        env: dict[str, str] = {}
        url, method = store.url, "store default"
        if mode == "poll":
            url, method = with_query(store.url, listen="off"), "url parameter listen=off"
        if args.poll_interval is not None:
            env["ONCELY_POLL_INTERVAL"] = str(args.poll_interval)
        poll = float(
            env.get("ONCELY_POLL_INTERVAL")
            or os.environ.get("ONCELY_POLL_INTERVAL")
            or oncely.App(store.url).settings.poll_interval
        )
        with worker_pool(args, url, store.dir, env) as pool:
            pool.start(1, args.concurrency)
            wait_registered(store, 1, pool, args.start_timeout)
            time.sleep(args.settle)  # past start-up work, into the idle wait
            ids = set()
            tick = time.monotonic()
            for _ in range(args.latency_jobs):
                ids.add(store.app.enqueue(TASK).id)
                tick += args.latency_interval
                time.sleep(max(0.0, tick - time.monotonic()))
            try:
                wait_drained(store, len(ids), pool, args.timeout)
            finally:
                stopped = pool.stop(args.stop_timeout)
        jobs = [job for job in store.all_jobs() if job.id in ids]
    delays = sorted(
        (job.started_at - job.created_at).total_seconds() * 1000.0
        for job in jobs
        if job.started_at is not None
    )
    if not delays:
        raise BenchError("no job of the latency run recorded started_at")
    return {
        "mode": mode,
        "listen_off_method": method if mode == "poll" else None,
        "poll_interval_s": poll,
        "jobs": len(ids),
        "spacing_ms": args.latency_interval * 1000,
        "p50_ms": round(percentile(delays, 0.50), 2),
        "p90_ms": round(percentile(delays, 0.90), 2),
        "p99_ms": round(percentile(delays, 0.99), 2),
        "max_ms": round(delays[-1], 2),
        "mean_ms": round(sum(delays) / len(delays), 2),
        **verify(jobs, len(ids)),
        **stopped,
    }


# report -----------------------------------------------------------------------------------------


def git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty-src" if dirty else "")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def fmt(value: float, unit: str = "") -> str:
    return f"{value:,.0f}{unit}" if value >= 100 else f"{value:,.2f}{unit}"


def render(doc: dict[str, Any], console: Console) -> None:
    title = (
        f"oncely throughput — store={doc['store']}  cpus={doc['cpu_count']}  "
        f"python={doc['python']}  rev={doc['git_revision']}  "
        f"load {doc['loadavg_before']} → {doc.get('loadavg_after')}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("detail")
    enqueue = doc.get("enqueue") or {}
    if "single" in enqueue:
        s = enqueue["single"]
        table.add_row(
            "enqueue, single",
            fmt(s["jobs_per_s"], " jobs/s"),
            f"{s['jobs']} x app.enqueue in {s['seconds']} s (1 txn each)",
        )
    if "batch" in enqueue:
        b = enqueue["batch"]
        table.add_row(
            "enqueue, batch",
            fmt(b["jobs_per_s"], " jobs/s"),
            f"{b['jobs']} via enqueue_many({b['batch_size']}/call) in {b['seconds']} s",
        )
    for run in doc.get("end_to_end", []):
        ok = "[green]exactly once[/]" if run["exactly_once"] else "[red]NOT exactly once[/]"
        rounds = run.get("jobs_per_s_runs", [])
        spread = (f"median of {len(rounds)} (runs: {', '.join(fmt(r) for r in rounds)}); "
                  if len(rounds) > 1 else "")
        table.add_row(
            f"end-to-end, W={run['workers']} C={run['concurrency'] or 'defaults'}",
            fmt(run["jobs_per_s"], " jobs/s"),
            f"{spread}{run['jobs']} no-ops; first start→last finish {run['store_span_seconds']} s; "
            f"spawn→drained {run['wall_seconds']} s ({fmt(run['wall_jobs_per_s'])} jobs/s, "
            f"start-up {run['startup_seconds']} s); {ok}",
        )
    base = next((run for run in doc.get("limits", []) if run["limit"] == "none"), None)
    for run in doc.get("limits", []):
        ok = "[green]exactly once[/]" if run["exactly_once"] else "[red]NOT exactly once[/]"
        cost = ""
        if base is not None and run is not base and base["jobs_per_s"]:
            cost = f"{(run['jobs_per_s'] / base['jobs_per_s'] - 1) * 100:+.1f}% vs none; "
        spread = ", ".join(fmt(rate) for rate in run["jobs_per_s_runs"])
        table.add_row(
            f"limits, {run['limit']}",
            fmt(run["jobs_per_s"], " jobs/s"),
            f"median of {run['rounds']} (runs: {spread}); {cost}"
            f"W={run['workers']} C={run['concurrency'] or 'defaults'}, {run['jobs']} no-ops; {ok}",
        )
    for lat in doc.get("start_latency", []):
        how = "LISTEN/NOTIFY" if doc["store"] == "postgres" else "data_version poll"
        if lat["mode"] == "poll":
            how = f"LISTEN off ({lat['listen_off_method']})"
        table.add_row(
            f"start latency, {lat['mode']}",
            f"p50 {fmt(lat['p50_ms'])} / p99 {fmt(lat['p99_ms'])} ms",
            f"{how}; poll_interval {lat['poll_interval_s']} s; {lat['jobs']} jobs "
            f"{lat['spacing_ms']:.0f} ms apart; p90 {lat['p90_ms']} max {lat['max_ms']} ms",
        )
    for problem in doc.get("problems", []):
        table.add_row("[red]problem[/]", "", problem.splitlines()[0])
    console.print(table)


# main -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--store", choices=("sqlite", "postgres"), required=True)
    p.add_argument("--jobs", type=int, default=20000, help="jobs for batch enqueue and end-to-end")
    p.add_argument(
        "--workers",
        help="comma-separated worker-process counts for end-to-end "
        "(default: sqlite 1,2; postgres 1,4)",
    )
    p.add_argument(
        "--concurrency", type=int, default=4,
        help="handler threads per worker (limits and latency parts)",
    )
    p.add_argument(
        "--e2e-concurrency", default="defaults,128",
        help="comma-separated handler-thread counts per worker for the end-to-end part: "
        "'defaults' (the worker's own settings, no --concurrency flag) and enough threads that "
        "no-op jobs keep the claim batches full",
    )
    p.add_argument(
        "--e2e-rounds", type=int, default=1,
        help="runs of each end-to-end shape; the median is reported with every run's rate",
    )
    p.add_argument("--json-out", help="also write the JSON document to this path")
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("ONCELY_TEST_POSTGRES_URL") or DEFAULT_PG_URL,
        help="server for --store postgres (a fresh schema per run)",
    )
    p.add_argument("--single-jobs", type=int, default=2000, help="jobs for the single enqueue")
    p.add_argument("--batch-size", type=int, default=5000, help="jobs per enqueue_many call")
    p.add_argument(
        "--latency",
        choices=("auto", "on", "off"),
        default="auto",
        help="start-latency runs (auto: postgres only)",
    )
    p.add_argument("--latency-jobs", type=int, default=200)
    p.add_argument("--latency-interval", type=float, default=0.02, help="seconds between jobs")
    p.add_argument("--poll-interval", type=float, help="ONCELY_POLL_INTERVAL for latency workers")
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds an idle latency worker gets after registering",
    )
    p.add_argument(
        "--skip", default="", help="comma-separated parts to skip: enqueue,e2e,limits,latency"
    )
    p.add_argument(
        "--limit-jobs",
        type=int,
        default=10000,
        help="jobs per run of the limits part (no control, max_running, rate limit)",
    )
    p.add_argument(
        "--limit-rounds",
        type=int,
        default=3,
        help="rounds of the limits part; the variants alternate and each reports its median",
    )
    p.add_argument(
        "--limit-concurrency", default="defaults",
        help="handler threads per worker for the limits part ('defaults': the worker's own "
        "settings, no --concurrency flag)",
    )
    p.add_argument(
        "--limit-workers",
        type=int,
        help="worker processes for the limits part (default: the first --workers count)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a drain")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--stop-timeout", type=float, default=60.0)
    p.add_argument(
        "--app",
        default=APP_PATH,
        help="module:attr of the workers' app; it must register a task named 'noop' "
        "(lets you benchmark a variant without touching src/)",
    )
    p.add_argument("--profile-dir", help="attach py-spy to end-to-end workers; stacks go here")
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument(
        "--profile-args",
        default="",
        help="extra py-spy record flags, e.g. '--gil' (CPU holding the GIL) or "
        "'--idle --threads' (wall clock per thread)",
    )
    p.add_argument("--keep", action="store_true", help="keep stores and logs (for debugging)")
    args = p.parse_args(argv)
    try:
        args.worker_counts = [
            int(n) for n in (args.workers or DEFAULT_WORKERS[args.store]).split(",") if n.strip()
        ]
    except ValueError:
        p.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    try:
        args.e2e_concurrency = [0 if n.strip() == "defaults" else int(n)
                                for n in args.e2e_concurrency.split(",") if n.strip()]
    except ValueError:
        p.error(f"--e2e-concurrency must be comma-separated integers, got "
                f"{args.e2e_concurrency!r}")
    if (
        min(
            [
                args.jobs,
                args.single_jobs,
                args.batch_size,
                args.concurrency,
                args.latency_jobs,
                args.e2e_rounds,
                *args.worker_counts,
                *[n or 1 for n in args.e2e_concurrency],
            ]
        )
        < 1
    ):
        p.error("counts must be at least 1")
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    try:
        args.limit_concurrency = (0 if args.limit_concurrency == "defaults"
                                  else int(args.limit_concurrency))
    except ValueError:
        p.error(f"--limit-concurrency takes a count or 'defaults', got {args.limit_concurrency!r}")
    if min(args.limit_jobs, args.limit_rounds, args.limit_concurrency or 1) < 1 or (
        args.limit_workers is not None and args.limit_workers < 1
    ):
        p.error("counts must be at least 1")
    return args


def run_part(doc: dict[str, Any], name: str, work: Callable[[], Any], console: Console) -> Any:
    console.print(f"[dim]… {name}[/]", highlight=False)
    try:
        return work()
    except (BenchError, oncely.OncelyError, OSError) as exc:
        doc["problems"].append(f"{name}: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    doc: dict[str, Any] = {
        "benchmark": "oncely.throughput",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": args.store,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "oncely": getattr(oncely, "__version__", None),
        "git_revision": git_revision(),
        "loadavg_before": load_average(),  # other work on the machine skews every figure
        "params": {
            "jobs": args.jobs,
            "single_jobs": args.single_jobs,
            "batch_size": args.batch_size,
            "workers": args.worker_counts,
            "concurrency": args.concurrency,
            "e2e_concurrency": args.e2e_concurrency,
            "e2e_rounds": args.e2e_rounds,
            "limit_jobs": args.limit_jobs,
            "limit_rounds": args.limit_rounds,
            "app": args.app,
            "postgres_url": plain_pg_url(args.postgres_url) if args.store == "postgres" else None,
        },
        "enqueue": {},
        "end_to_end": [],
        "limits": [],
        "start_latency": [],
        "problems": [],
    }
    try:
        if "enqueue" not in args.skip:
            doc["enqueue"] = run_part(doc, "enqueue", lambda: measure_enqueue(args), console) or {}
        if "e2e" not in args.skip:
            for concurrency in args.e2e_concurrency:
                for workers in args.worker_counts:
                    result = measure_e2e_rounds(args, doc, console, workers, concurrency)
                    if result is not None:
                        doc["end_to_end"].append(result)
        if "limits" not in args.skip:
            measure_limits(args, doc, console)
        latency = args.latency == "on" or (args.latency == "auto" and args.store == "postgres")
        if latency and "latency" not in args.skip:
            modes = ("notify", "poll") if args.store == "postgres" else ("notify",)
            for mode in modes:
                result = run_part(
                    doc,
                    f"start latency ({mode})",
                    functools.partial(measure_latency, args, mode),
                    console,
                )
                if result is not None:
                    doc["start_latency"].append(result)
    finally:
        kill_all_workers()
    doc["loadavg_after"] = load_average()
    render(doc, console)
    text = json.dumps(doc, indent=2, default=str)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return 1 if doc["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
