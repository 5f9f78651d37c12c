"""The ingestion gate: may this organization send events right now?

An organization is refused while its threshold state is ``BLOCKED`` and it is not paid (paying
unblocks at once, before the next job run clears the state). The answer is cached per
organization for ``gate_ttl`` seconds; a change into or out of ``BLOCKED`` invalidates it:

* in this process at once (the job calls :meth:`IngestionGate.invalidate` after its commit);
* in every other process within ``gate_refresh`` seconds: the job bumps a generation number in
  the same transaction as the state change, and a gate that sees a new generation drops its
  whole cache (such changes are rare, so dropping everything is cheap).

If the job store cannot be read the gate answers from a stale cache entry, or allows: billing
trouble must not drop a customer's data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

import oncely
from oncely_billing import db
from oncely_billing.cycle import cycle_for_day
from oncely_billing.settings import MeteringSettings

log = logging.getLogger("oncely_billing.gate")
MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class GateAnswer:
    org_id: int
    known: bool
    allowed: bool
    paid: bool = False
    state: str | None = None
    usage: int = 0
    block_at: int = 0
    resets_on: date | None = None
    billing_url: str = ""

    @property
    def message(self) -> str:
        if not self.known:
            return f"organization {self.org_id} does not exist"
        if self.allowed:
            return f"ingestion is allowed for organization {self.org_id}"
        return (
            f"Ingestion is blocked for organization {self.org_id}: the free plan's limit of "
            f"{self.block_at:,} units per billing cycle was reached ({self.usage:,} units "
            f"used). It resumes when usage resets on {self.resets_on}, or at once after an "
            f"upgrade: {self.billing_url}"
        )


class IngestionGate:
    def __init__(
        self,
        app: oncely.App,
        settings: MeteringSettings,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.settings = settings
        self.monotonic = monotonic
        self._cache: dict[int, tuple[GateAnswer, float]] = {}
        self._lock = threading.Lock()
        self._generation: str | None = None
        self._generation_checked = float("-inf")
        self.hits = 0
        self.misses = 0

    def allowed(self, org_id: int) -> bool:
        return self.check(org_id).allowed

    def check(self, org_id: int) -> GateAnswer:
        now = self.monotonic()
        self._check_generation(now)
        with self._lock:
            cached = self._cache.get(org_id)
            if cached is not None and now - cached[1] < self.settings.gate_ttl:
                self.hits += 1
                return cached[0]
            self.misses += 1
        try:
            answer = self._lookup(org_id)
        except oncely.StoreError as exc:
            log.warning("ingestion gate: store unavailable (%s); answering from cache or allowing",
                        exc, extra={"event": "gate.store_error"})
            return cached[0] if cached is not None else GateAnswer(org_id, False, True)
        with self._lock:
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
            self._cache[org_id] = (answer, now)
        return answer

    def invalidate(self, org_ids: Iterable[int] | None = None) -> None:
        """Forget the cached answers for ``org_ids`` (all of them when None)."""
        with self._lock:
            if org_ids is None:
                self._cache.clear()
                return
            for org_id in org_ids:
                self._cache.pop(org_id, None)

    def _check_generation(self, now: float) -> None:
        if now - self._generation_checked < self.settings.gate_refresh:
            return
        self._generation_checked = now
        dialect = db.sql_dialect(self.app)
        try:
            with db.connection(self.app) as conn:
                row = db.fetch_one(conn, dialect, "state_get", {"key": "gate.generation"})
        except oncely.StoreError:
            return
        generation = None if row is None else str(row[0])
        if generation != self._generation:
            if self._generation is not None or generation is not None:
                self.invalidate()
            self._generation = generation

    def _lookup(self, org_id: int) -> GateAnswer:
        dialect = db.sql_dialect(self.app)
        with db.connection(self.app) as conn:
            row = db.fetch_one(conn, dialect, "org_get", {"org_id": org_id})
        if row is None:
            return GateAnswer(org_id, known=False, allowed=True)
        return answer_from_row(org_id, row, self.settings, self.app.clock.now().date())


def answer_from_row(
    org_id: int, row: tuple[Any, ...], settings: MeteringSettings, today: date
) -> GateAnswer:
    plan, anchor_day, usage, state, paid = row[2], int(row[9]), int(row[11]), row[12], bool(row[16])
    cycle = cycle_for_day(anchor_day, today)
    return GateAnswer(
        org_id,
        known=True,
        allowed=not (state == "BLOCKED" and not paid),
        paid=paid,
        state=state,
        usage=usage,
        block_at=settings.limits_for(plan).block_at,
        resets_on=cycle.end,
        billing_url=settings.billing_link(org_id),
    )
