"""Handlers that misbehave, for real worker processes: they ignore timeouts, exit the
interpreter, raise what cannot be printed or return what no store can hold.

Like :mod:`tests.apps.basic`, each execution is recorded in a side-effect database of its own
(``ONCELY_TEST_EFFECTS``), so tests count what really ran.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import oncely
from tests.apps.basic import record_effect

app = oncely.App(os.environ.get("ONCELY_DATABASE_URL") or "sqlite:///oncely.db")
ONE_RETRY = oncely.RetryPolicy(attempts=2, backoff="fixed", base_delay=0)


def hog_cpu(ctx: oncely.JobContext, seconds: float) -> None:
    """Burn CPU for ``seconds``, ignoring every request to stop (in a child process, SIGTERM
    too), and record when each attempt started, ran and ended."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # deaf to the worker's request to stop
    started = time.time()
    record_effect("start", str(ctx.attempt), ctx, started, started)
    deadline, tick = time.monotonic() + seconds, 0.0
    while time.monotonic() < deadline:
        sum(range(2000))  # CPU-bound: no sleep, no check of ctx.cancelled
        if time.monotonic() - tick >= 0.1:
            tick = time.monotonic()
            now = time.time()
            record_effect("tick", str(ctx.attempt), ctx, now, now)
    record_effect("end", str(ctx.attempt), ctx, started, time.time())


@app.task(name="hog", singleton=True, timeout=1, retry=ONE_RETRY)
def hog(ctx: oncely.JobContext, seconds: float, retry_seconds: float | None = None) -> None:
    hog_cpu(ctx, seconds if ctx.attempt == 1 or retry_seconds is None else retry_seconds)


# SIGTERM at its timeout, SIGKILL 2 s later.
@app.task(name="hog_process", singleton=True, timeout=2, retry=ONE_RETRY, isolation="process")
def hog_process(ctx: oncely.JobContext, seconds: float) -> None:
    hog_cpu(ctx, seconds)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


@app.task(name="raises")
def raises(ctx: oncely.JobContext, kind: str) -> None:
    now = time.time()
    record_effect("raises", kind, ctx, now, now)
    if kind == "exit":
        sys.exit(3)
    if kind == "unprintable":
        raise Unprintable()
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "generator_exit":
        raise GeneratorExit
    raise ValueError(f"unknown kind {kind!r}")


UNSTORABLE = {
    "bigint": lambda: 10**5000,
    "nul": lambda: "a\x00b",
    "surrogate": lambda: "half a pair: \ud800",
    "nested_nul": lambda: {"rows": [{"name": "x\x00y"}]},
    "nested_bigint": lambda: {"total": 7**6000},
}


@app.task(name="returns")
def returns(ctx: oncely.JobContext, n: int, kind: str = "plain") -> object:
    now = time.time()
    record_effect("returns", str(n), ctx, now, now)
    if kind == "bad_error":
        raise ValueError("cannot store \udc80 or \x00 as they are")
    if kind in UNSTORABLE:
        return UNSTORABLE[kind]()
    return n


@app.task(name="leader", singleton=True)
def leader(ctx: oncely.JobContext, n: int) -> int:
    now = time.time()
    record_effect("leader", str(n), ctx, now, now)
    return n


@app.task(name="probe", isolation="process")
def probe(ctx: oncely.JobContext, label: str) -> dict[str, object]:
    """What a process-isolated handler's context offers, exercised once each."""
    ctx.heartbeat()
    ctx.check_fence()
    ctx.checkpoint({"step": 1})
    with ctx.fenced():
        pass
    return {"pid": os.getpid(), "fence": ctx.fence, "attempt": ctx.attempt, "label": label,
            "args": ctx.args, "checkpoint": ctx.last_checkpoint,
            "tasks": sorted(ctx.app.tasks)}


@app.task(name="deaf", isolation="process", retry=ONE_RETRY)
def deaf(ctx: oncely.JobContext) -> None:
    """Saves its pid, then waits for ever, deaf to every request to stop."""
    ctx.checkpoint({"pid": os.getpid()})
    while True:
        try:
            time.sleep(0.05)
        except BaseException:
            continue
