"""Deliver a list of meter events through a small thread pool, saving results in batches.

The pool lets calls overlap (Stripe's latency is ~100 ms; 200 calls/s needs ~20 in flight) while
the client's throttle and per-(customer, meter) locks keep the limits. The caller's thread keeps
at most ``in_flight`` calls submitted, collects results as they finish and hands them to
``save`` every ``batch_size`` results — the job saves them under its fence, so that is also where
a zombie finds out it lost its lease and stops.

On the first error (Stripe unavailable, the fence lost, the job cancelled) no new call starts;
calls already running finish, their results are saved, and the error is raised: everything that
reached Stripe is on record, and the next run resumes after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field

from oncely_billing.stripe_client import MeterEvent, Outcome, SendResult


@dataclass
class Delivery:
    sent: int = 0
    delivered: int = 0
    duplicates: int = 0
    failed: int = 0
    failed_codes: dict[str, int] = field(default_factory=dict)

    def add(self, result: SendResult) -> None:
        self.sent += 1
        if result.outcome == Outcome.DELIVERED:
            self.delivered += 1
        elif result.outcome == Outcome.DUPLICATE:
            self.duplicates += 1
        else:
            self.failed += 1
            code = result.code or "unknown"
            self.failed_codes[code] = self.failed_codes.get(code, 0) + 1

    def merge(self, other: Delivery) -> None:
        self.sent += other.sent
        self.delivered += other.delivered
        self.duplicates += other.duplicates
        self.failed += other.failed
        for code, count in other.failed_codes.items():
            self.failed_codes[code] = self.failed_codes.get(code, 0) + count


def deliver(
    events: Iterable[MeterEvent],
    send: Callable[[MeterEvent], SendResult],
    pool: Executor,
    save: Callable[[list[SendResult]], None],
    *,
    in_flight: int,
    batch_size: int,
    before_send: Callable[[], None] = lambda: None,
) -> Delivery:
    """Send every event; ``before_send`` may raise to stop (cancellation, lost lease)."""
    summary = Delivery()
    pending: set[Future[SendResult]] = set()
    unsaved: list[SendResult] = []
    error: BaseException | None = None
    source = iter(events)
    exhausted = False

    def flush() -> None:
        nonlocal unsaved, error
        batch, unsaved = unsaved, []
        try:
            save(batch)
        except BaseException as exc:  # the fence, most likely: stop sending
            error = error or exc

    while True:
        while error is None and not exhausted and len(pending) < in_flight:
            try:
                before_send()
            except BaseException as exc:
                error = exc
                break
            event = next(source, None)
            if event is None:
                exhausted = True
                break
            pending.add(pool.submit(send, event))
        if not pending:
            break
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            failure = future.exception()
            if failure is not None:
                error = error or failure
            else:
                result = future.result()
                summary.add(result)
                unsaved.append(result)
        if len(unsaved) >= batch_size:
            flush()
    if unsaved:
        flush()
    if error is not None:
        raise error
    return summary
