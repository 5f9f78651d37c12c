"""The demo's worker processes: ``python -m oncely --app oncely_billing.demo.app:app worker``.

Each worker is launched through a tiny launcher that asks Linux to send it SIGTERM if the demo
process dies (``PR_SET_PDEATHSIG``), then becomes the worker under the same pid, so an
interrupted demo leaves no worker behind. Launches happen on the demo's main thread only (the
signal follows the *thread* that started the child). Output goes to ``logs/<phase>-worker-N.log``.

A frozen worker (SIGSTOP) must not be frozen while it holds the store's write lock, or the whole
fleet would wait for it — SQLite has one writer at a time, and a PostgreSQL transaction left open
blocks the rows it touched. :func:`holds_write_lock` checks that after the freeze, so the demo can
thaw and try again at a better moment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n"
)
APP = "oncely_billing.demo.app:app"


@dataclass
class Member:
    number: int  # launch order within the phase, from 1
    proc: subprocess.Popen[bytes]
    log: Path
    launched: float  # time.time()
    signals: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class Fleet:
    """The worker processes of one phase."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.env = env
        self.logs = logs
        self.members: list[Member] = []
        logs.mkdir(parents=True, exist_ok=True)

    def launch(self) -> Member:
        number = len(self.members) + 1
        log = self.logs / f"{self.name}-worker-{number}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, str(os.getpid()),
                 "-m", "oncely", "--app", APP, "worker"],
                env={**outside_env(), **self.env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        member = Member(number, proc, log, time.time())
        self.members.append(member)
        return member

    def alive(self) -> list[Member]:
        return [member for member in self.members if member.alive]

    def by_pid(self, pid: int) -> Member | None:
        return next((m for m in self.members if m.pid == pid and m.alive), None)

    def send(self, member: Member, sig: signal.Signals) -> None:
        member.signals.append(sig.name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(member.pid, sig)

    def stop_all(self, grace: float) -> dict[int, int | None]:
        """SIGTERM every live worker (SIGCONT first, in case one is frozen); SIGKILL what is
        still running after ``grace`` seconds. Returns each member's exit code."""
        for member in self.alive():
            self.send(member, signal.SIGCONT)
            self.send(member, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for member in self.members:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                member.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                self.send(member, signal.SIGKILL)
                member.proc.wait()
        return {member.number: member.proc.returncode for member in self.members}


def outside_env() -> dict[str, str]:
    """This process's environment without oncely's own settings: the demo sets its own."""
    return {key: value for key, value in os.environ.items() if not key.startswith("ONCELY_")}


def pid_of(worker_id: str | None) -> int | None:
    """The process id inside a worker id (``host:pid:suffix``)."""
    if not worker_id:
        return None
    parts = worker_id.split(":")
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return None


def holds_write_lock(url: str) -> bool:
    """Whether a transaction is holding the store's write side right now (see module doc)."""
    if url.startswith("sqlite:///"):
        return _sqlite_locked(url.removeprefix("sqlite:///"))
    return _postgres_stuck_transaction(url)


def _sqlite_locked(path: str) -> bool:
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def _postgres_stuck_transaction(url: str) -> bool:
    """A transaction left open across three looks, 40 ms apart (a frozen client's)."""
    import psycopg

    from oncely_billing.demo.dataset import with_schema

    plain = with_schema(url, None)
    query = ("SELECT pid, xact_start FROM pg_stat_activity WHERE datname = current_database() "
             "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()")
    seen: set[tuple[object, object]] | None = None
    with psycopg.connect(plain, autocommit=True) as conn:
        for _ in range(3):
            rows = {(row[0], row[1]) for row in conn.execute(query).fetchall()}
            seen = rows if seen is None else seen & rows
            if not seen:
                return False
            time.sleep(0.04)
    return bool(seen)
