"""One clock for leases: a worker reads the store server's time, not its own wall clock.

Every lease decision compares instants — a grant needs ``expires_at <= now``, a renewal sets
``expires_at = now + ttl``, the rescuer takes jobs whose ``lease_expires_at <= now``, leadership
is held until ``expires_at``. Each of those ``now`` values comes from the calling worker, so on
PostgreSQL, with workers on many machines, a worker whose wall clock is ahead would judge live
leases expired and take them over (or rescue their jobs), and one behind would grant leases that
expire early in everyone else's eyes.

The choice: the SQL keeps taking ``now`` as a parameter (so a frozen clock still freezes time down
into SQL and tests stay deterministic), and each worker corrects the ``now`` it passes. A worker
whose clock tells real time (:func:`oncely.clock.tells_real_time`: the system clock, or a
:class:`~oncely.clock.SkewedClock`) runs on a :class:`~oncely.clock.ServerAlignedClock`: it
measures its offset to the server's ``clock_timestamp()`` before it registers and again on every
heartbeat (each TTL/3), taking the midpoint of the round trip, and every ``now`` it reads after
that — claim, renewal, leader election, rescue, slot enqueue, finish — is server time. The offset
is recorded on the worker's row: ``oncely workers`` and ``oncely doctor`` show it and warn when
it exceeds a tenth of the lease TTL (the clock is wrong enough to matter, or the round trip is
slow). Frozen and warp clocks are left alone: their time is the test's or the simulation's.

The error left is half a round trip plus the drift between two heartbeats, far below the safety
margin the keeper keeps between a lease's deadline and its expiry.

SQLite: every process of one database file runs on one machine and reads its clock; there is no
server clock (:meth:`~oncely.store.base.Store.server_time` is None) and the offset is 0.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from oncely.clock import Clock, ServerAlignedClock, tells_real_time
from oncely.runtime import Runtime
from oncely.store.base import Store


def aligned(runtime: Runtime) -> Runtime:
    """``runtime`` on a server-aligned clock when its clock tells real time, else unchanged."""
    clock = runtime.clock
    if isinstance(clock, ServerAlignedClock) or not tells_real_time(clock):
        return runtime
    return dataclasses.replace(runtime, clock=ServerAlignedClock(clock))


def measure(store: Store, clock: Clock) -> float | None:
    """Set ``clock``'s offset to the server (when it is a server-aligned clock) and return it:
    seconds to add to the local clock to read the server's; None without a server clock."""
    if not isinstance(clock, ServerAlignedClock):
        return None
    base = clock.base
    sent, local = base.monotonic(), base.now()
    server = store.server_time()
    if server is None:
        return None
    rtt = base.monotonic() - sent
    offset = (server - (local + timedelta(seconds=rtt / 2))).total_seconds()
    clock.set_offset(offset)
    return offset
