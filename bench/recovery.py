#!/usr/bin/env python3
"""Recovery figures: how soon a schedule runs again after the worker running it dies or freezes.

    python bench/recovery.py                          # both stores, 5 kills and 3 pauses each
    python bench/recovery.py --stores sqlite --kills 10 --pauses 0 --json-out recovery.json

Three worker processes (concurrency 1, default settings: lease TTL 30 s) share a schedule that
fires every 5 s; each run works 3 s and records its start and its end in the job store through
``ctx.fenced()`` (``bench/recovery_app.py``).

* **SIGKILL mid-run**: one second into a run, its worker is SIGKILLed. Figure: from the kill to
  the next start of the schedule's handler (goal ≤ 2 s). Checked: the interrupted slot ran again,
  and no two runs were ever in flight at once (every run started after the previous one ended or
  was killed). The killed worker is replaced before the next round.
* **SIGSTOP past the lease**: one second into a run, its worker is SIGSTOPped (lease TTL
  ``--pause-ttl``, 10 s by default, so a round takes seconds, not minutes), then SIGCONTed
  2 s after the TTL. Figure: from the stop to the next start (goal ≤ TTL + 1 s). Checked: the
  zombie's last write, through its stale fence, was refused.

Every scenario gets a fresh store (a temporary SQLite file, or a PostgreSQL schema dropped
afterwards; the helpers of ``bench/schedules.py``). Prints a table, then the figures as JSON with
the machine's core count. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "src", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import recovery_app  # noqa: E402
from bench import schedules as fleet_kit  # noqa: E402

fleet_kit.APP_PATH = "bench.recovery_app:app"  # the fleet helpers start workers of this app
WORKERS = 3
KILL_GOAL_S = 2.0
PAUSE_MARGIN_S = 1.0  # goal: next run <= TTL + this
INTO_RUN_S = 1.0  # the fault comes this long after the run started


def create_table(store: fleet_kit.FreshStore) -> None:
    with store.app.store.transaction() as conn:
        conn.execute(f"CREATE TABLE {recovery_app.TABLE} "
                     f"({recovery_app.TYPES[store.app.store.dialect]})")


def rows(store: fleet_kit.FreshStore) -> list[dict[str, Any]]:
    names = recovery_app.COLUMNS.split(", ")
    with store.app.store.transaction() as conn:
        found = conn.execute(f"SELECT {recovery_app.COLUMNS} FROM {recovery_app.TABLE} "
                             "ORDER BY at").fetchall()
    return [dict(zip(names, tuple(row), strict=True)) for row in found]


def wait_row(store: fleet_kit.FreshStore, pool: fleet_kit.Fleet, timeout: float,
             match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [row for row in rows(store) if match(row)]
        if found:
            return found[0]
        if time.monotonic() >= deadline:
            raise fleet_kit.BenchError(f"no matching run within {timeout:.0f} s")
        time.sleep(0.01)


def fresh_start(store: fleet_kit.FreshStore, pool: fleet_kit.Fleet,
                after: float) -> dict[str, Any]:
    """A run that started after ``after`` less than half a second ago, on a live worker."""
    deadline = time.monotonic() + recovery_app.PERIOD * 4 + 30
    while time.monotonic() < deadline:
        now = time.time()
        for row in reversed(rows(store)):
            if (row["kind"] == "start" and row["at"] > after and now - row["at"] < 0.5
                    and pool.place_of(row["pid"]) is not None):
                return row
        time.sleep(0.01)
    raise fleet_kit.BenchError("no run started on a live worker")


def one_round(store: fleet_kit.FreshStore, pool: fleet_kit.Fleet, scenario: str, ttl: float,
              after: float) -> dict[str, Any]:
    current = fresh_start(store, pool, after)
    time.sleep(max(0.0, current["at"] + INTO_RUN_S - time.time()))
    place = pool.place_of(current["pid"])
    assert place is not None
    victim = pool.procs[place]
    fault_at = time.time()
    victim.send_signal(signal.SIGKILL if scenario == "kill" else signal.SIGSTOP)
    limit = 30.0 if scenario == "kill" else ttl + 30.0
    successor = wait_row(store, pool, limit, lambda r: r["kind"] == "start"
                         and r["fence"] > current["fence"] and r["at"] > fault_at)
    result = {"next_run_s": round(successor["at"] - fault_at, 3), "fault_at": fault_at,
              "job_id": current["job_id"], "fence": current["fence"], "slot": current["slot"],
              "same_slot": successor["slot"] == current["slot"]}
    if scenario == "kill":
        victim.wait(10)
        pool.procs[place] = pool.spawn()
    else:
        time.sleep(max(0.0, fault_at + ttl + 2.0 - time.time()))
        os.kill(victim.pid, signal.SIGCONT)
        last = wait_row(store, pool, recovery_app.WORK + 30, lambda r: r["kind"] != "start"
                        and r["job_id"] == current["job_id"] and r["fence"] == current["fence"])
        result["zombie_write"] = last["kind"]  # "refused" is the goal; "end" would be a bug
    result["successor_at"] = successor["at"]
    return result


def in_flight_overlaps(found: list[dict[str, Any]], killed: dict[tuple[int, int], float]) -> int:
    """Runs that started before the previous run ended (or was killed)."""
    ends = {(r["job_id"], r["fence"]): r["at"] for r in found if r["kind"] != "start"}
    starts = [r for r in found if r["kind"] == "start"]
    overlaps = 0
    for before, after in itertools.pairwise(starts):
        key = (before["job_id"], before["fence"])
        end = killed.get(key, ends.get(key, float("inf")))
        overlaps += after["at"] < end
    return overlaps


def measure(args: argparse.Namespace, kind: str, scenario: str, count: int) -> dict[str, Any]:
    ttl = 30.0 if scenario == "kill" else args.pause_ttl
    env = {"ONCELY_LEASE_TTL": str(ttl), "ONCELY_LEADER_TTL": str(ttl / 2)}
    args.store = kind
    with fleet_kit.fresh_store(args, f"recovery-{scenario}") as store, \
            fleet_kit.fleet(store, env) as pool:
        create_table(store)
        pool.start(WORKERS, args.start_timeout)
        rounds: list[dict[str, Any]] = []
        after = time.time()
        for _ in range(count):
            rounds.append(one_round(store, pool, scenario, ttl, after))
            after = rounds[-1]["successor_at"] + recovery_app.WORK
        codes = pool.stop()
        found = rows(store)
    for entry in rounds:
        entry["slot_rerun"] = any(r["kind"] == "start" and r["slot"] == entry["slot"]
                                  and r["fence"] > entry["fence"] for r in found)
    killed = {(r["job_id"], r["fence"]): r["fault_at"] for r in rounds} if scenario == "kill" \
        else {}
    times = sorted(r["next_run_s"] for r in rounds)
    goal = KILL_GOAL_S if scenario == "kill" else ttl + PAUSE_MARGIN_S
    return {
        "store": kind, "scenario": scenario, "lease_ttl_s": ttl, "goal_s": goal,
        "rounds": [{k: v for k, v in r.items() if k not in ("fault_at", "successor_at")}
                   for r in rounds],
        "median_s": round(times[len(times) // 2], 3), "max_s": times[-1],
        "within_goal": sum(t <= goal for t in times),
        "slots_rerun": sum(r["slot_rerun"] for r in rounds),
        "two_in_flight": in_flight_overlaps(found, killed) if scenario == "kill" else None,
        "zombie_refused": (sum(r.get("zombie_write") == "refused" for r in rounds)
                           if scenario == "pause" else None),
        "exit_codes": codes,
    }


def render(doc: dict[str, Any], console: Console) -> None:
    table = Table(title=f"oncely recovery — {WORKERS} workers, schedule every "
                        f"{recovery_app.PERIOD:g} s, runs of {recovery_app.WORK:g} s, cores="
                        f"{doc['cpu_count']}", title_justify="left")
    for column in ("store", "fault", "median", "max", "goal", "detail"):
        table.add_column(column)
    for run in doc["results"]:
        n = len(run["rounds"])
        if run["scenario"] == "kill":
            fault = "SIGKILL 1 s into a run"
            detail = (f"slot re-run {run['slots_rerun']}/{n}; two in flight: "
                      f"{run['two_in_flight']}")
        else:
            fault = f"SIGSTOP past the lease (TTL {run['lease_ttl_s']:g} s)"
            detail = f"zombie write refused {run['zombie_refused']}/{n}"
        table.add_row(run["store"], fault, f"{run['median_s']:.2f} s", f"{run['max_s']:.2f} s",
                      f"≤ {run['goal_s']:g} s", f"{run['within_goal']}/{n} within goal; {detail}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--pauses", type=int, default=3)
    parser.add_argument("--pause-ttl", type=float, default=10.0)
    parser.add_argument("--postgres-url", default=os.environ.get("ONCELY_TEST_POSTGRES_URL")
                        or fleet_kit.DEFAULT_PG_URL)
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true", help="keep the stores and logs")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    doc: dict[str, Any] = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                           "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                           "results": [], "problems": []}
    for kind in args.stores.split(","):
        for scenario, count in (("kill", args.kills), ("pause", args.pauses)):
            if count <= 0:
                continue
            try:
                doc["results"].append(measure(args, kind, scenario, count))
            except fleet_kit.BenchError as exc:
                doc["problems"].append(f"{kind} {scenario}: {exc}")
    doc["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    render(doc, Console(stderr=True))
    for problem in doc["problems"]:
        print(f"problem: {problem}", file=sys.stderr)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 1 if doc["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
