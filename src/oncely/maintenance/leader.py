"""Leader election over the ``leader`` lease row.

The leader holds a lease of ``leader_ttl`` seconds and renews it every third of that. Its term is
the lease's fence, so two leaders in a row always have different, increasing terms. A worker that
fails to renew (store down, process paused) stops acting as leader at its local deadline, before
the lease can pass to someone else; a worker that shuts down resigns so a successor takes over at
the next election instead of after the TTL. Nothing correct depends on there being exactly one
leader: the services it runs are safe to run twice (fenced, idempotent transitions).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from oncely.errors import StoreError
from oncely.runtime import Runtime
from oncely.store.base import LeaderState


@dataclass(frozen=True)
class ElectionResult:
    is_leader: bool
    term: int
    leader_id: str | None
    changed: bool


class LeaderElector:
    def __init__(self, runtime: Runtime, worker_id: str) -> None:
        self.runtime = runtime
        self.worker_id = worker_id
        self.ttl = runtime.settings.leader_ttl
        self.is_leader = False
        self.term = 0
        self._deadline = 0.0  # monotonic: stop leading after this unless re-elected

    def run_once(self) -> ElectionResult:
        clock = self.runtime.clock
        sent = clock.monotonic()
        try:
            state: LeaderState = self.runtime.store.leader_elect(self.worker_id, clock.now(),
                                                                 self.ttl)
        except StoreError:
            return self._expire_if_due()
        was = self.is_leader
        self.is_leader = state.is_leader
        if state.is_leader:
            self._deadline = sent + self.ttl * 2 / 3
            if not was or state.term != self.term:
                self.runtime.events.emit("leader.elected", worker_id=self.worker_id,
                                         term=state.term)
        elif was:
            self.runtime.events.emit("leader.lost", worker_id=self.worker_id, term=self.term,
                                     new_leader=state.leader_id)
        self.term = state.term
        return ElectionResult(self.is_leader, state.term, state.leader_id, was != self.is_leader)

    def _expire_if_due(self) -> ElectionResult:
        changed = False
        if self.is_leader and self.runtime.clock.monotonic() >= self._deadline:
            self.is_leader = False
            changed = True
            self.runtime.events.emit("leader.lost", worker_id=self.worker_id, term=self.term,
                                     new_leader=None)
        return ElectionResult(self.is_leader, self.term, None, changed)

    def resign(self) -> None:
        if self.is_leader:
            with contextlib.suppress(StoreError):
                self.runtime.store.leader_resign(self.worker_id, self.runtime.clock.now())
            self.is_leader = False
            self.runtime.events.emit("leader.resigned", worker_id=self.worker_id, term=self.term)
