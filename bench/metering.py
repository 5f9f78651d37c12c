#!/usr/bin/env python3
"""Stripe usage metering figures: one hour for many orgs at the throttle, and a 24-hour catch-up.

    python bench/metering.py --orgs 50000                       # the goal: 100k events, 200/s
    python bench/metering.py --orgs 5000 --backlog-orgs 1000 --backlog-rate 600

What runs is the real job (``oncely_billing.meter``) through ``oncely.testing.run_job`` on a
fresh SQLite store (``--database-url`` for another), with the real ``stripe`` SDK talking HTTP to
the Stripe stub running **in its own process** (``python -m oncely_billing.demo.stripe_stub``, with
``--stripe-latency`` seconds added to every answer, like Stripe's own latency). Usage comes from a
synthetic in-memory source: every org has a Stripe customer and usage in both meters, so each org
is 2 meter events (the worst case of the goal: 50,000 orgs = 100,000 events); the figures are
about delivery, not the usage query.

Figures:

* **one hour**: time from the job's start to its end, meter events accepted by the stub, events/s,
  calls/s (every HTTP request the stub answered, retries included), 429s, duplicate identifiers
  sent (the stub answers them "already exists") and accepted (must be 0), accepted == expected.
* **24-hour backlog**: the watermark is set 24 due hours back; runs (each at most
  ``--hours-per-run`` hours, then the follow-up it enqueued) repeat until caught up, at
  ``--backlog-rate`` with ``--backlog-orgs`` orgs (both printed, as they differ from the hour's).
* **replay**: the hour is reported once more after forgetting our side (watermark and delivery
  records): every call must be answered "already exists" and nothing new accepted.

The goal (billing reference): one hour of 50,000 orgs (up to 100,000 events) delivered within
10 minutes at <= 200 calls/s, with zero duplicate identifiers accepted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import oncely  # noqa: E402
from oncely.testing import run_job  # noqa: E402
from oncely_billing import stripe_store  # noqa: E402
from oncely_billing.meter import (  # noqa: E402
    HOUR,
    MeterConfig,
    OrgHourUsage,
    StripeMetering,
    hour_floor,
    install_stripe_metering,
    to_ms,
)
from oncely_billing.stripe_client import StripeSettings  # noqa: E402


class SyntheticUsage:
    """Every org has usage in both meters every hour; counts vary by org and hour."""

    def __init__(self, orgs: int, prefix: str) -> None:
        self.orgs = orgs
        self.prefix = prefix  # each phase bills its own orgs: the stub is shared
        self.seconds = 0.0

    def __call__(self, start: datetime, end: datetime) -> list[OrgHourUsage]:
        began = time.perf_counter()
        salt = start.hour
        rows = [OrgHourUsage(f"{self.prefix}{i}", f"cus_{self.prefix}{i:06d}",
                             traces=1 + (i + salt) % 50, observations=1 + (i * 7 + salt) % 400,
                             scores=(i + salt) % 3)
                for i in range(self.orgs)]
        self.seconds += time.perf_counter() - began
        return rows


class Stub:
    """The Stripe stub in a child process; stopped by its pid at the end."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oncely_billing.demo.stripe_stub", "--latency", str(latency)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise SystemExit(f"the Stripe stub did not start: {self.url!r}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as answer:
            return json.load(answer)

    def stats(self) -> dict[str, int]:
        return dict(self.get("/_stub/stats"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def make_metering(url: str, stub: Stub, orgs: int, rate: float, args: argparse.Namespace,
                  hours_per_run: int, prefix: str,
                  ) -> tuple[oncely.App, StripeMetering, SyntheticUsage]:
    app = oncely.App(url)
    usage = SyntheticUsage(orgs, prefix)
    settings = StripeSettings(api_key="sk_test_bench", api_base=stub.url, rate=rate,
                              concurrency=args.concurrency, timeout=10.0)
    metering = install_stripe_metering(app, usage, settings=settings,
                                       config=MeterConfig(hours_per_run=hours_per_run))
    return app, metering, usage


def set_watermark(app: oncely.App, hour: datetime) -> None:
    queries = stripe_store.ensure_schema(app)
    with app.transaction() as tx:
        queries.advance_watermark(tx.connection, None, to_ms(hour), to_ms(app.clock.now()), 0, 0)


def run_until_caught_up(metering: StripeMetering) -> tuple[float, list[dict[str, Any]]]:
    assert metering.task is not None
    results = []
    began = time.perf_counter()
    while True:
        outcome = run_job(metering.task, lease_ttl=4 * 3600)
        if outcome.state != oncely.JobState.SUCCEEDED:
            raise SystemExit(f"metering run failed: {outcome.job.errors}")
        results.append(outcome.result)
        if not outcome.result["behind"]:
            return time.perf_counter() - began, results


def measure(stub: Stub, before: dict[str, int], seconds: float, expected: int) -> dict[str, Any]:
    after = stub.stats()
    delta = {key: after[key] - before.get(key, 0) for key in after}
    return {
        "seconds": round(seconds, 1),
        "events_accepted": delta["accepted"],
        "events_expected": expected,
        "events_per_s": round(delta["accepted"] / seconds, 1) if seconds else None,
        "calls": delta["requests"],
        "calls_per_s": round(delta["requests"] / seconds, 1) if seconds else None,
        "rate_limited_429": delta["rate_limited"],
        "duplicate_identifiers_sent": delta["duplicates"],
        "concurrent_calls_same_customer_meter": delta["concurrent_violations"],
    }


def one_hour(args: argparse.Namespace, stub: Stub, url: str) -> dict[str, Any]:
    app, metering, usage = make_metering(url, stub, args.orgs, args.rate, args, 1, "h")
    latest_due = hour_floor(app.clock.now() - timedelta(minutes=65))
    set_watermark(app, latest_due - HOUR)
    before = stub.stats()
    seconds, results = run_until_caught_up(metering)
    figures = measure(stub, before, seconds, 2 * args.orgs)
    figures["usage_query_seconds"] = round(usage.seconds, 2)
    figures["rate_setting"] = args.rate
    figures["orgs"] = args.orgs
    figures["failed"] = sum(r["failed"] for r in results)
    if args.replay:
        with app.transaction() as tx:
            tx.execute("DELETE FROM oncely_stripe_deliveries")
            tx.execute("UPDATE oncely_stripe_watermark SET hour_start_ms = %s",
                       (to_ms(latest_due - HOUR),))
        before = stub.stats()
        seconds, _ = run_until_caught_up(metering)
        replay = measure(stub, before, seconds, 0)
        figures["replay"] = {"seconds": replay["seconds"],
                             "new_events_accepted": replay["events_accepted"],
                             "answered_already_exists": replay["duplicate_identifiers_sent"]}
    app.close()
    return figures


def backlog(args: argparse.Namespace, stub: Stub, url: str) -> dict[str, Any]:
    app, metering, usage = make_metering(url, stub, args.backlog_orgs, args.backlog_rate, args,
                                         args.hours_per_run, "b")
    latest_due = hour_floor(app.clock.now() - timedelta(minutes=65))
    set_watermark(app, latest_due - 24 * HOUR)
    before = stub.stats()
    seconds, results = run_until_caught_up(metering)
    figures = measure(stub, before, seconds, 2 * args.backlog_orgs * 24)
    figures.update(hours=24, orgs=args.backlog_orgs, rate_setting=args.backlog_rate,
                   runs=len(results), usage_query_seconds=round(usage.seconds, 2),
                   hours_reported=sum(len(r["hours_reported"]) for r in results))
    app.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=200.0, help="throttle, calls/s")
    parser.add_argument("--concurrency", type=int, default=32, help="sender threads")
    parser.add_argument("--stripe-latency", type=float, default=0.05,
                        help="seconds the stub waits before answering")
    parser.add_argument("--backlog-orgs", type=int, default=1000)
    parser.add_argument("--backlog-rate", type=float, default=600.0)
    parser.add_argument("--hours-per-run", type=int, default=6)
    parser.add_argument("--skip-hour", action="store_true")
    parser.add_argument("--skip-backlog", action="store_true")
    parser.add_argument("--replay", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--database-url", help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    report: dict[str, Any] = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                              "stripe_latency_s": args.stripe_latency,
                              "concurrency": args.concurrency}
    stub = Stub(args.stripe_latency)
    problems: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if not args.skip_hour:
                url = args.database_url or f"sqlite:///{tmp}/hour.db"
                report["one_hour"] = one_hour(args, stub, url)
                print("one hour:", json.dumps(report["one_hour"]), flush=True)
            if not args.skip_backlog:
                url = args.database_url or f"sqlite:///{tmp}/backlog.db"
                report["backlog_24h"] = backlog(args, stub, url)
                print("24h backlog:", json.dumps(report["backlog_24h"]), flush=True)
        accepted = [row["identifier"] for row in stub.get("/_stub/events")]
        twice = sum(1 for count in Counter(accepted).values() if count > 1)
        report["duplicate_identifiers_accepted"] = twice
        for name in ("one_hour", "backlog_24h"):
            part = report.get(name)
            if part and part["events_accepted"] != part["events_expected"]:
                problems.append(f"{name}: accepted {part['events_accepted']} of "
                                f"{part['events_expected']} events")
        if twice:
            problems.append(f"{twice} identifiers were accepted more than once")
        hour = report.get("one_hour")
        if hour and hour.get("replay", {}).get("new_events_accepted"):
            problems.append("the replay billed new events")
    finally:
        stub.stop()
    report["problems"] = problems
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
