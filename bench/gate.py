"""How long the ingestion gate takes to answer: healthy store, stopped store, black-holed store.

    python bench/gate.py [--checks 2000] [--timeout 0.5]

Prints per scenario the answers' latency (p50, p99, max, in ms) and how many answers were
verified by the store or failed open. The black hole is a listening socket that never accepts
(connections queue, nobody ever answers), like a network path that drops packets.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from oncely_billing import DuckDBUsageSource, MeteringSettings, build_app, metering_of, models


def measure(url: str, checks: int, settings: MeteringSettings, orgs: int) -> dict[str, float]:
    app = build_app(url, usage_source=DuckDBUsageSource("unused.duckdb"), settings=settings)
    gate = metering_of(app).gate
    took: list[float] = []
    verified = 0
    for number in range(checks):
        started = time.perf_counter()
        answer = gate.check(1 + number % orgs)
        took.append((time.perf_counter() - started) * 1000)
        verified += answer.verified
    took.sort()
    return {"checks": checks, "p50_ms": round(statistics.median(took), 3),
            "p99_ms": round(took[int(len(took) * 0.99) - 1], 3), "max_ms": round(took[-1], 3),
            "verified": verified, "failed_open": checks - verified}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=0.5)
    args = parser.parse_args()
    settings = MeteringSettings(gate_timeout=args.timeout, gate_ttl=1.0)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/oncely.db"
        app = build_app(url, usage_source=DuckDBUsageSource("unused.duckdb"))
        models.add_organizations(app, [models.Organization(i, f"org{i}", _created())
                                       for i in range(1, 1001)])
        app.close()
        results["healthy sqlite (1,000 orgs, ttl 1 s)"] = measure(url, args.checks, settings,
                                                                 1000)
        results["stopped store"] = measure(f"sqlite:///{folder}/missing/dir/x.db", args.checks,
                                           settings, 1000)
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        url = f"postgresql://postgres@127.0.0.1:{hole.getsockname()[1]}/x?connect_timeout=30"
        results["black-holed store"] = measure(url, args.checks, settings, 1000)
    for name, figures in results.items():
        print(f"{name:<40} " + "  ".join(f"{key} {value}" for key, value in figures.items()))
    print(json.dumps(results))


def _created():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime(2025, 1, 15, tzinfo=UTC)


if __name__ == "__main__":
    main()
