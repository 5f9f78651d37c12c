"""The ingestion gate: may this organization send events right now?

An organization is refused while its threshold state is ``BLOCKED`` *in its current billing
cycle* and it is not paid. Two things lift a block without waiting for the threshold job:

* **paying**: the billing change bumps the gate generation in its own transaction (see below);
* **a new cycle**: the gate compares the cycle the block was recorded in with the cycle that
  contains today (``cycle.py``); from the first instant of the new cycle the answer is "allowed",
  whatever the threshold job is doing (failing, down, not yet run). A refusal always names the
  end of the cycle the block belongs to as its reset date.

Caching: answers are kept per organization for ``gate_ttl`` seconds and never past the reset
date of a block. A change into or out of ``BLOCKED`` (the job) or of an organization's billing
(``models.set_billing``) invalidates them:

* in this process at once (:meth:`IngestionGate.invalidate`);
* in every other process within ``gate_refresh`` seconds: the writer bumps a generation number
  in the same transaction as its change, and a gate that sees a new generation drops its whole
  cache (such changes are rare, so dropping everything is cheap).

Failing open — billing trouble must never drop a customer's data. Every read of the job store
(the schema check, the generation, the organization) runs on a helper thread and is waited for
at most ``gate_timeout`` seconds. If it fails or overruns, the gate:

* answers from a stale cache entry (a stale block is honoured until its reset date), or allows,
  marking the answer ``verified=False`` — it never says "does not exist" (HTTP 404) unless the
  store answered that;
* stops asking the store for ``gate_retry`` seconds, so a black-holed store costs one budget per
  ``gate_retry`` seconds, not one per request; at most ``MAX_PROBES`` reads hang at once.

So: store unreachable, hanging, failing, or its schema not migrated yet → fail open. An
organization the store reports missing → 404. Constructing a gate touches no store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, TypeVar

import oncely
from oncely_billing import db, migrations
from oncely_billing.cycle import cycle_for_day
from oncely_billing.settings import MeteringSettings

log = logging.getLogger("oncely_billing.gate")
MAX_ENTRIES = 200_000
MAX_PROBES = 4  # store reads allowed to hang at once (each on its own daemon thread)
GENERATION_KEY = "gate.generation"
T = TypeVar("T")


class GateStoreTimeout(Exception):
    """A read of the job store did not answer within the gate's time budget."""


@dataclass(frozen=True)
class GateAnswer:
    org_id: int
    known: bool  # the store has this organization
    allowed: bool
    paid: bool = False
    state: str | None = None
    usage: int = 0
    block_at: int = 0
    resets_on: date | None = None  # end of the cycle the answer belongs to (the reset date)
    billing_url: str = ""
    verified: bool = True  # False: the store could not be asked; this is a fail-open answer

    @property
    def message(self) -> str:
        if not self.verified:
            return (f"ingestion is allowed for organization {self.org_id} (billing state "
                    "unavailable: failing open)")
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

    def as_of(self, today: date) -> GateAnswer | None:
        """This answer on ``today``; None when a block ended with its cycle (ask again)."""
        if not self.allowed and self.resets_on is not None and today >= self.resets_on:
            return None
        return self


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
        self._store_down_until = float("-inf")
        self._probes = threading.BoundedSemaphore(MAX_PROBES)
        self.hits = 0
        self.misses = 0
        self.failed_open = 0

    def allowed(self, org_id: int) -> bool:
        return self.check(org_id).allowed

    def check(self, org_id: int) -> GateAnswer:
        now = self.monotonic()
        today = self.app.clock.now().date()
        self._check_generation(now)
        with self._lock:
            cached = self._cache.get(org_id)
        if cached is not None and now - cached[1] < self.settings.gate_ttl:
            answer = cached[0].as_of(today)
            if answer is not None:
                with self._lock:
                    self.hits += 1
                return answer
        with self._lock:
            self.misses += 1
        if now < self._store_down_until:
            return self._fail_open(org_id, cached, today)
        try:
            answer = self._budgeted(lambda: self._lookup(org_id, today))
        except Exception as exc:
            self._store_failed(now, exc)
            return self._fail_open(org_id, cached, today)
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

    # fail-open machinery --------------------------------------------------------------------
    def _fail_open(self, org_id: int, cached: tuple[GateAnswer, float] | None,
                   today: date) -> GateAnswer:
        with self._lock:
            self.failed_open += 1
        stale = cached[0].as_of(today) if cached is not None else None
        if stale is not None:
            return replace(stale, verified=False) if stale.allowed else stale
        return GateAnswer(org_id, known=False, allowed=True, verified=False)

    def _store_failed(self, now: float, exc: BaseException) -> None:
        self._store_down_until = now + self.settings.gate_retry
        log.warning("ingestion gate: job store unavailable (%s: %s); failing open for %.0fs",
                    type(exc).__name__, exc, self.settings.gate_retry,
                    extra={"event": "gate.store_error"})

    def _budgeted(self, read: Callable[[], T]) -> T:
        """Run ``read`` on a daemon thread; give up after ``gate_timeout`` seconds."""
        if not self._probes.acquire(blocking=False):
            raise GateStoreTimeout("earlier store reads are still hanging")
        outcome: list[Any] = []
        done = threading.Event()

        def probe() -> None:
            try:
                outcome.append((True, read()))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                self._probes.release()
                done.set()

        threading.Thread(target=probe, name="gate-store-read", daemon=True).start()
        if not done.wait(self.settings.gate_timeout):
            raise GateStoreTimeout(f"no answer within {self.settings.gate_timeout:g}s")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    # store reads (on the helper thread) --------------------------------------------------------
    def _check_generation(self, now: float) -> None:
        if now - self._generation_checked < self.settings.gate_refresh:
            return
        self._generation_checked = now
        if now < self._store_down_until:
            return
        try:
            generation = self._budgeted(self._read_generation)
        except Exception as exc:
            self._store_failed(now, exc)
            return
        if generation != self._generation:
            if self._generation is not None or generation is not None:
                self.invalidate()
            self._generation = generation

    def _read_generation(self) -> str | None:
        migrations.ensure_schema(self.app)
        dialect = db.sql_dialect(self.app)
        with db.connection(self.app) as conn:
            row = db.fetch_one(conn, dialect, "state_get", {"key": GENERATION_KEY})
        return None if row is None else str(row[0])

    def _lookup(self, org_id: int, today: date) -> GateAnswer:
        migrations.ensure_schema(self.app)
        dialect = db.sql_dialect(self.app)
        with db.connection(self.app) as conn:
            row = db.fetch_one(conn, dialect, "org_get", {"org_id": org_id})
        if row is None:
            return GateAnswer(org_id, known=False, allowed=True)
        return answer_from_row(org_id, row, self.settings, today)


def answer_from_row(
    org_id: int, row: tuple[Any, ...], settings: MeteringSettings, today: date
) -> GateAnswer:
    """The gate's answer from an ``org_get`` row: a block counts only in the cycle it was
    recorded in, and names that cycle's end as its reset date."""
    plan, anchor_day, usage, state, paid = row[2], int(row[9]), int(row[11]), row[12], bool(row[16])
    current = cycle_for_day(anchor_day, today)
    recorded_start = None if row[10] is None else db.from_epoch_day(row[10])
    if recorded_start != current.start:
        state, usage = None, 0  # recorded in an earlier cycle: this cycle starts from zero
    return GateAnswer(
        org_id,
        known=True,
        allowed=not (state == "BLOCKED" and not paid),
        paid=paid,
        state=state,
        usage=usage,
        block_at=settings.limits_for(plan).block_at,
        resets_on=current.end,
        billing_url=settings.billing_link(org_id),
    )
