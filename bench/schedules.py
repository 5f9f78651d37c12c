#!/usr/bin/env python3
"""Schedule figures for one oncely store: slot start delay and takeover after a worker dies.

    python bench/schedules.py --store sqlite
    python bench/schedules.py --store postgres --workers 1,6 --slots 30 --takeovers 5

* **slot start delay**: a schedule fires every second; for each slot, the delay from the nominal
  slot instant to the start of its handler (recorded by the handler itself), p50/p99/max, with 1
  and with 6 worker processes.
* **takeover**: the worker running a singleton job is SIGKILLed; the time from the kill to the
  start of the successor's handler (recorded under the successor's fence), against the lease TTL.
  ``rescue``: one enqueued singleton job, taken over by its own retry once the leader's rescuer
  has found its lease expired; ``next_slot``: a schedule whose run holds the key, taken over by a
  later slot's job once the key's lease has expired.

Every measurement gets a fresh store (a temporary SQLite file, or a PostgreSQL schema
``oncely_bench_<hex>`` dropped afterwards) and real worker processes
(``python -m oncely --app bench.schedule_app:app worker``). Prints a table, then the figures as
JSON (with the machine's core count). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "src", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import oncely  # noqa: E402
from bench import schedule_app  # noqa: E402
from oncely.store.base import JobState  # noqa: E402

APP_PATH = "bench.schedule_app:app"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SLOT_DELAY_GOAL_MS = 500.0  # p99, PostgreSQL with LISTEN/NOTIFY
TAKEOVER_MARGIN_S = 2.0  # takeover <= lease TTL + this

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


# stores and workers -----------------------------------------------------------------------------


class FreshStore:
    """A store of its own for one measurement, with the handlers' table; removed by close()."""

    def __init__(self, kind: str, pg_url: str, tag: str, keep: bool) -> None:
        self.kind, self.keep = kind, keep
        self.dir = Path(tempfile.mkdtemp(prefix=f"oncely-bench-{tag}-"))
        self.schema: str | None = None
        if kind == "sqlite":
            self.url = f"sqlite:///{self.dir / 'oncely.db'}"
        else:
            self.schema = f"oncely_bench_{uuid.uuid4().hex[:12]}"
            joiner = "&" if "?" in pg_url else "?"
            self.url = f"{pg_url}{joiner}{urlencode({'schema': self.schema})}"
            self.pg_url = pg_url
        self.app = oncely.App(self.url, auto_migrate=False)
        self.app.migrate()  # fails early, in one line, if the server is unreachable
        self.app.store.check_schema()
        with self.app.store.transaction() as conn:
            conn.execute(f"CREATE TABLE {schedule_app.TABLE} "
                         f"({schedule_app.TYPES[self.app.store.dialect]})")

    def starts(self) -> list[dict[str, Any]]:
        names = schedule_app.COLUMNS.split(", ")
        with self.app.store.transaction() as conn:
            rows = conn.execute(f"SELECT {schedule_app.COLUMNS} FROM {schedule_app.TABLE} "
                                "ORDER BY started").fetchall()
        return [dict(zip(names, tuple(row), strict=True)) for row in rows]

    def close(self, keep_logs: bool = False) -> None:
        with contextlib.suppress(Exception):
            self.app.close()
        if self.schema is not None and not self.keep:
            import psycopg

            parts = urlsplit(self.pg_url)
            query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("schema", "pool_max")]
            plain = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
            with psycopg.connect(plain, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        if not (self.keep or keep_logs):
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def fresh_store(args: argparse.Namespace, tag: str) -> Iterator[FreshStore]:
    store = FreshStore(args.store, args.postgres_url, tag, args.keep)
    try:
        yield store
    except BaseException as exc:
        store.close(keep_logs=True)  # the worker logs say what went wrong
        if isinstance(exc, BenchError):
            raise BenchError(f"{exc} (worker logs kept in {store.dir})") from exc
        raise
    store.close()


class Fleet:
    """Real worker processes on one store, each in a numbered place (a killed one is replaced
    in its place by a new process)."""

    def __init__(self, store: FreshStore, env: dict[str, str]) -> None:
        self.store = store
        self.env = dict(os.environ)
        self.env.update(env)
        self.env["ONCELY_DATABASE_URL"] = store.url
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.spawned = 0

    def spawn(self) -> subprocess.Popen[bytes]:
        log = open(self.store.dir / f"worker-{self.spawned}.log", "wb")  # noqa: SIM115
        self.spawned += 1
        argv = ["-m", "oncely", "--app", APP_PATH, "worker", "--concurrency", "1"]
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(os.getpid()), *argv],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        return proc

    def start(self, count: int, timeout: float) -> None:
        self.procs = [self.spawn() for _ in range(count)]
        self.wait_registered(count, timeout)

    def wait_registered(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.store.app.store.worker_list()) < count:
            self.check()
            if time.monotonic() >= deadline:
                raise BenchError(f"{count} worker(s) did not register within {timeout:.0f} s")
            time.sleep(0.05)

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise BenchError(f"worker pid {proc.pid} exited with code {proc.returncode}; "
                                 f"logs in {self.store.dir}")

    def place_of(self, pid: int) -> int | None:
        for index, proc in enumerate(self.procs):
            if proc.pid == pid and proc.poll() is None:
                return index
        return None

    def stop(self, timeout: float = 30.0) -> list[int | None]:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)


@contextlib.contextmanager
def fleet(store: FreshStore, env: dict[str, str]) -> Iterator[Fleet]:
    pool = Fleet(store, env)
    try:
        yield pool
    finally:
        pool.kill_all()  # a no-op after a clean stop()


# measurements -----------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def settings_env(args: argparse.Namespace, ttl: float | None = None) -> dict[str, str]:
    env = {}
    if ttl is not None:
        env["ONCELY_LEASE_TTL"] = str(ttl)
        env["ONCELY_LEADER_TTL"] = str(ttl / 2)  # the defaults' ratio (30 s / 15 s)
    if args.maintenance_interval is not None:
        env["ONCELY_MAINTENANCE_INTERVAL"] = str(args.maintenance_interval)
    if args.enqueue_interval is not None:
        env["ONCELY_ENQUEUE_INTERVAL"] = str(args.enqueue_interval)
    return env


def effective(env: dict[str, str]) -> dict[str, float]:
    """The settings the workers run with (their environment over the defaults)."""
    merged = {k: v for k, v in os.environ.items() if k.startswith("ONCELY_")}
    merged.update(env)
    settings = oncely.Settings.from_env(merged)
    return {name: getattr(settings, name) for name in
            ("lease_ttl", "leader_ttl", "maintenance_interval", "enqueue_interval",
             "poll_interval")}


def measure_slot_delay(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """Nominal slot → handler start, for ``args.slots`` one-second slots."""
    env = {"ONCELY_BENCH_MODE": "delay", **settings_env(args)}
    with fresh_store(args, f"delay-w{workers}") as store, fleet(store, env) as pool:
        pool.start(workers, args.start_timeout)
        time.sleep(args.settle)  # past start-up: every worker enqueues and claims
        first = math.floor(time.time()) + 1
        last = first + args.slots - 1
        while time.time() < last + 3.0:
            pool.check()
            time.sleep(0.2)
        codes = pool.stop()
        starts = [s for s in store.starts() if first <= s["slot"] <= last]
        outcomes = {r.slot.timestamp(): str(r.outcome)
                    for r in store.app.store.ledger_list("bench-delay", limit=10_000)}
    delays = sorted((s["started"] - s["slot"]) * 1000.0 for s in starts)
    if not delays:
        raise BenchError("no slot of the delay run started")
    window = [outcomes.get(float(slot), "absent") for slot in range(first, last + 1)]
    return {
        "workers": workers,
        "slots": args.slots,
        "started": len(delays),
        "outcomes": {o: window.count(o) for o in sorted(set(window))},
        "p50_ms": round(percentile(delays, 0.50), 1),
        "p90_ms": round(percentile(delays, 0.90), 1),
        "p99_ms": round(percentile(delays, 0.99), 1),
        "max_ms": round(delays[-1], 1),
        "min_ms": round(delays[0], 1),
        "settings": effective(env),
        "exit_codes": codes,
    }


def holder(store: FreshStore, pool: Fleet, after_fence: int, timeout: float) -> dict[str, Any]:
    """The newest start with a fence above ``after_fence`` whose worker is alive."""
    deadline = time.monotonic() + timeout
    while True:
        fresh = [s for s in store.starts() if s["fence"] > after_fence]
        if fresh:
            return fresh[-1]
        if time.monotonic() >= deadline:
            raise BenchError(f"no handler started under a fence above {after_fence} "
                             f"within {timeout:.0f} s")
        time.sleep(0.02)


def lease_left(store: FreshStore, job_id: int) -> float | None:
    job = store.app.store.job_get(job_id)
    if job is None or job.state != JobState.RUNNING or job.lease_expires_at is None:
        return None
    return (job.lease_expires_at - datetime.now(UTC)).total_seconds()


def leader_pid(store: FreshStore) -> int | None:
    for lease in store.app.store.lease_list():
        live = lease.expires_at is not None and lease.expires_at > datetime.now(UTC)
        if lease.key == "leader" and lease.owner and live:
            with contextlib.suppress(IndexError, ValueError):
                return int(lease.owner.rsplit(":", 2)[1])
    return None


def measure_takeover(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """SIGKILL the worker running a singleton job, ``args.takeovers`` times; kill → successor."""
    ttl = args.ttl
    env = {"ONCELY_BENCH_MODE": mode, **settings_env(args, ttl)}
    rng = random.Random(args.seed)
    rounds: list[dict[str, Any]] = []
    with fresh_store(args, f"takeover-{mode}") as store, fleet(store, env) as pool:
        pool.start(args.takeover_workers, args.start_timeout)
        if mode == "rescue":
            store.app.enqueue_job(schedule_app.hold, {})  # its options: singleton, retries
        current = holder(store, pool, 0, args.start_timeout)
        for _ in range(args.takeovers):
            place = pool.place_of(current["pid"])
            if place is None:
                raise BenchError(f"the holder pid {current['pid']} is not one of the workers")
            # Kill at a random point of the renewal cycle (renewals come every TTL/3).
            time.sleep(rng.uniform(0.5, 0.5 + ttl / 3))
            left = lease_left(store, current["job_id"])
            was_leader = leader_pid(store) == current["pid"]
            victim = pool.procs[place]
            killed_at = time.time()
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            successor = holder(store, pool, current["fence"], ttl + args.takeover_timeout)
            rounds.append({
                "takeover_s": round(successor["started"] - killed_at, 3),
                "lease_left_at_kill_s": None if left is None else round(left, 3),
                "killed_leader": was_leader,
                "successor_attempt": successor["attempt"],
                "same_job": successor["job_id"] == current["job_id"],
            })
            pool.procs[place] = pool.spawn()  # back to full strength before the next kill
            pool.wait_registered(args.takeover_workers, args.start_timeout)
            current = successor
        codes = pool.stop()
    times = sorted(r["takeover_s"] for r in rounds)
    return {
        "mode": mode,
        "workers": args.takeover_workers,
        "lease_ttl_s": ttl,
        "goal_s": ttl + TAKEOVER_MARGIN_S,
        "rounds": rounds,
        "min_s": times[0],
        "median_s": round(percentile(times, 0.5), 3),
        "max_s": times[-1],
        "within_goal": sum(t <= ttl + TAKEOVER_MARGIN_S for t in times),
        "settings": effective(env),
        "exit_codes": codes,
    }


# report -----------------------------------------------------------------------------------------


def render(doc: dict[str, Any], console: Console) -> None:
    title = (f"oncely schedules — store={doc['store']}  cores={doc['cpu_count']}  "
             f"python={doc['python']}  load {doc['loadavg_before']} → {doc.get('loadavg_after')}")
    table = Table(title=title, title_justify="left")
    for column, justify in (("figure", "left"), ("p50 / median", "right"),
                            ("p99 / max", "right"), ("goal", "right"), ("detail", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for run in doc["slot_delay"]:
        goal = f"p99 < {SLOT_DELAY_GOAL_MS:.0f} ms" if doc["store"] == "postgres" else "-"
        table.add_row(
            f"slot start delay, {run['workers']} worker(s)",
            f"{run['p50_ms']:.0f} ms", f"{run['p99_ms']:.0f} / {run['max_ms']:.0f} ms", goal,
            f"{run['started']}/{run['slots']} slots started; {run['outcomes']}; "
            f"enqueue every {run['settings']['enqueue_interval']:g} s",
        )
    for run in doc["takeover"]:
        lefts = [r["lease_left_at_kill_s"] for r in run["rounds"]
                 if r["lease_left_at_kill_s"] is not None]
        table.add_row(
            f"takeover after SIGKILL ({run['mode']})",
            f"{run['median_s']:.2f} s", f"{run['max_s']:.2f} s",
            f"≤ {run['goal_s']:g} s",
            f"TTL {run['lease_ttl_s']:g} s, maintenance every "
            f"{run['settings']['maintenance_interval']:g} s; {run['within_goal']}/"
            f"{len(run['rounds'])} within goal; lease left at kill "
            f"{min(lefts, default=0):.1f}-{max(lefts, default=0):.1f} s; "
            f"{sum(r['killed_leader'] for r in run['rounds'])} kill(s) hit the leader",
        )
    console.print(table)
    for problem in doc["problems"]:
        console.print(f"[red]problem:[/] {problem}", highlight=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--store", choices=("sqlite", "postgres"), required=True)
    p.add_argument("--postgres-url",
                   default=os.environ.get("ONCELY_TEST_POSTGRES_URL") or DEFAULT_PG_URL,
                   help="server for --store postgres (a fresh schema per run)")
    p.add_argument("--workers", default="1,6", help="worker counts for the slot delay runs")
    p.add_argument("--slots", type=int, default=30, help="one-second slots measured per run")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds after the workers registered before the measured slots")
    p.add_argument("--takeovers", type=int, default=4, help="kills per takeover mode")
    p.add_argument("--takeover-modes", default="rescue,next_slot")
    p.add_argument("--takeover-workers", type=int, default=3)
    p.add_argument("--ttl", type=float, default=5.0, help="lease (and leader) TTL, seconds")
    p.add_argument("--takeover-timeout", type=float, default=30.0,
                   help="seconds past the TTL to wait for a successor")
    p.add_argument("--maintenance-interval", type=float,
                   help="ONCELY_MAINTENANCE_INTERVAL for the workers (default: the setting's)")
    p.add_argument("--enqueue-interval", type=float,
                   help="ONCELY_ENQUEUE_INTERVAL for the workers (default: the setting's)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: delay,takeover")
    p.add_argument("--seed", type=int, help="seed for the kill timing")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--json-out", help="also write the JSON document to this path")
    p.add_argument("--keep", action="store_true", help="keep stores and worker logs")
    args = p.parse_args(argv)
    try:
        args.worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    except ValueError:
        p.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    args.modes = [m.strip() for m in args.takeover_modes.split(",") if m.strip()]
    if set(args.modes) - {"rescue", "next_slot"}:
        p.error("--takeover-modes: rescue, next_slot")
    if min([args.slots, args.takeovers, args.takeover_workers, *args.worker_counts]) < 1:
        p.error("counts must be at least 1")
    if args.takeover_workers < 2:
        p.error("--takeover-workers must be at least 2 (someone has to take over)")
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    return args


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    doc: dict[str, Any] = {
        "benchmark": "oncely.schedules",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": args.store,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": load_average(),
        "slot_delay": [],
        "takeover": [],
        "problems": [],
    }
    parts: list[tuple[str, Any]] = []
    if "delay" not in args.skip:
        parts += [(f"slot delay, {n} worker(s)", ("slot_delay", measure_slot_delay, n))
                  for n in args.worker_counts]
    if "takeover" not in args.skip:
        parts += [(f"takeover, {mode}", ("takeover", measure_takeover, mode))
                  for mode in args.modes]
    for name, (key, measure, param) in parts:
        console.print(f"[dim]… {name}[/]", highlight=False)
        try:
            doc[key].append(measure(args, param))
        except (BenchError, oncely.OncelyError, OSError) as exc:
            doc["problems"].append(f"{name}: {type(exc).__name__}: {exc}")
    doc["loadavg_after"] = load_average()
    render(doc, console)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return 1 if doc["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
