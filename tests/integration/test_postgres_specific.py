"""What only the PostgreSQL store has: LISTEN/NOTIFY wake-ups, enqueue inside the caller's own
transaction, isolation by ``?schema=``, failing fast on an unreachable server, and a pool that
recovers when its connections are killed or the server goes away and comes back.

Each test works in schemas of its own and skips unless ``ONCELY_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from oncely.errors import InvalidURL, StoreUnavailable
from oncely.store.migrations import latest_version, migrations_for
from oncely.store.params import JobClaimParams, JobFilter, JobFinish, JobInsert, SlotEnqueue
from oncely.store.postgres import PostgresStore
from oncely.testing import wait_until
from oncely.types import JobState

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


@pytest.fixture
def base_url() -> str:
    url = os.environ.get("ONCELY_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("ONCELY_TEST_POSTGRES_URL not set")
    return url


@pytest.fixture
def open_store(base_url: str) -> Iterator[Callable[..., PostgresStore]]:
    """Opens migrated stores; each call without ``schema`` gets a fresh schema. Every store is
    closed and every schema dropped afterwards."""
    import psycopg

    stores: list[PostgresStore] = []
    schemas: set[str] = set()

    def make(schema: str | None = None, url: str | None = None, **params: str) -> PostgresStore:
        schema = schema or f"oncely_t_{uuid.uuid4().hex[:12]}"
        schemas.add(schema)
        store = PostgresStore(with_query(url or base_url, schema=schema, **params))
        stores.append(store)
        store.migrate()
        return store

    yield make
    for store in stores:
        store.close()
    with psycopg.connect(base_url, autocommit=True) as admin:
        for schema in schemas:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def insert(store: PostgresStore, **fields: Any) -> int:
    return store.job_insert(JobInsert(task="task", **fields), NOW).job.id


def claim(store: PostgresStore, limit: int = 10) -> list[int]:
    jobs = store.job_claim(JobClaimParams("w1", NOW, limit, 30.0)).jobs
    return [job.id for job in jobs]


# wake-ups ---------------------------------------------------------------------------------------


def test_an_insert_wakes_a_waiting_store_within_a_second(open_store) -> None:
    waiter = open_store()
    producer = open_store(schema=waiter.schema)
    assert waiter.wait_for_work(0) is False  # opens the LISTEN connection
    woke: list[tuple[bool, float]] = []
    thread = threading.Thread(
        target=lambda: woke.append((waiter.wait_for_work(10), time.monotonic()))
    )
    thread.start()
    sent = time.monotonic()
    insert(producer)
    thread.join(5)
    assert woke, "wait_for_work did not return"
    returned, at = woke[0]
    assert returned is True
    assert at - sent < 1.0


def test_retry_and_bulk_insert_wake_waiters_but_a_future_job_does_not(open_store) -> None:
    waiter = open_store()
    producer = open_store(schema=waiter.schema)
    assert waiter.wait_for_work(0) is False
    insert(producer, run_at=NOW + timedelta(hours=1))
    assert waiter.wait_for_work(0.3) is False
    producer.job_insert_many([JobInsert(task="bulk") for _ in range(3)], NOW)
    assert waiter.wait_for_work(2) is True
    failed = insert(producer, queue="q")
    producer.job_cancel(failed, NOW, "stop")
    while waiter.wait_for_work(0.1):  # drain
        pass
    producer.job_retry(failed, NOW)
    assert waiter.wait_for_work(2) is True


def test_listen_off_polls_instead_of_waking(open_store) -> None:
    waiter = open_store(listen="off")
    producer = open_store(schema=waiter.schema)
    insert(producer)
    started = time.monotonic()
    assert waiter.wait_for_work(0.4) is False  # no wake-up: the caller's poll finds the job
    assert time.monotonic() - started >= 0.35
    assert len(claim(waiter, limit=5)) == 1


def test_wait_for_work_times_out_without_work(open_store) -> None:
    store = open_store()
    started = time.monotonic()
    assert store.wait_for_work(0.3) is False
    assert 0.25 <= time.monotonic() - started < 2.0


# transactions -----------------------------------------------------------------------------------


def test_enqueue_rolls_back_with_the_callers_transaction(open_store) -> None:
    store = open_store()
    watcher = open_store(schema=store.schema)
    assert watcher.wait_for_work(0) is False
    with store.transaction() as conn:
        conn.execute("CREATE TABLE orders (id integer PRIMARY KEY)")

    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO orders VALUES (1)")
        store.job_insert(JobInsert(task="ship", unique_key="order-1"), NOW, conn=conn)
        raise RuntimeError("payment declined")

    assert store.job_list(JobFilter()) == []
    with store.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    assert watcher.wait_for_work(0.5) is False  # a rolled-back enqueue wakes nobody

    with store.transaction() as conn:
        conn.execute("INSERT INTO orders VALUES (1)")
        result = store.job_insert(JobInsert(task="ship", unique_key="order-1"), NOW, conn=conn)
        assert result.created
    assert [job.id for job in store.job_list(JobFilter())] == [result.job.id]
    assert watcher.wait_for_work(2) is True


def test_store_calls_inside_a_transaction_join_it(open_store) -> None:
    store = open_store()
    with pytest.raises(RuntimeError), store.transaction():
        insert(store)
        store.notify_work("default")
        raise RuntimeError("roll it all back")
    assert store.job_list(JobFilter()) == []


def test_a_checkpoint_inside_a_fenced_transaction_joins_it(open_store) -> None:
    store = open_store()
    job_id = insert(store)
    job = store.job_claim(JobClaimParams("w1", NOW, 1, 30.0)).jobs[0]
    done = threading.Event()

    def work() -> None:
        with store.fenced_transaction(job.id, job.fence, NOW):
            # On a connection of its own this would wait forever for the fenced row lock.
            assert store.job_checkpoint(job.id, job.fence, {"page": 7}, NOW)
            assert store.job_fence_current(job.id, job.fence, NOW)
        done.set()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    assert done.wait(10), "the checkpoint waited on its own fenced transaction"
    stored = store.job_get(job_id)
    assert stored is not None and stored.checkpoint == {"page": 7}


def test_concurrent_migrations_of_one_new_schema_apply_once(base_url: str, open_store) -> None:
    schema = f"oncely_t_{uuid.uuid4().hex[:12]}"
    open_store(schema=schema).close()  # registers the schema for cleanup, then start afresh
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    stores = [PostgresStore(with_query(base_url, schema=schema)) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    results: list[object] = []

    def migrate(store: PostgresStore) -> None:
        barrier.wait(10)
        try:
            results.append(store.migrate())
        except Exception as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=migrate, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        applied = [r.applied for r in results if not isinstance(r, Exception)]
        assert len(applied) == len(stores), results
        every = [f"{m.version:04d}_{m.name}" for m in migrations_for("postgres")]
        # Each migration was applied by exactly one of them (they take turns per migration,
        # so one store may apply the first few and another the rest).
        assert sorted(name for names in applied for name in names) == every
        stores[0].check_schema()
    finally:
        for store in stores:
            store.close()


def test_a_claim_skips_a_key_whose_lease_row_a_paused_session_holds(open_store) -> None:
    import psycopg

    store = open_store()
    first = store.job_insert(JobInsert(task="t", singleton_key="k"), NOW).job
    assert claim(store) == [first.id]
    running = store.job_get(first.id)
    assert running is not None
    store.job_finish(JobFinish(running.id, running.fence, NOW, JobState.SUCCEEDED))
    second = insert(store, singleton_key="k")
    plain = insert(store)

    # A worker stopped in the middle of a transaction that locked the key's lease row.
    with psycopg.connect(store.target.conninfo) as paused:
        paused.execute("SELECT 1 FROM oncely_leases WHERE key = 'k' FOR UPDATE")
        started = time.monotonic()
        assert claim(store) == [plain]  # the other work goes on; the key's job waits
        assert time.monotonic() - started < 2.0
        paused.rollback()
    assert claim(store) == [second]


def _waiting_for_advisory_lock(store: PostgresStore) -> bool:
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("path", ["one-statement", "full"])
def test_a_pause_committed_while_a_claim_waits_holds_that_claim(open_store, path) -> None:
    from oncely.store.postgres import claim as _pg_claim

    store = open_store()
    observer = open_store(schema=store.schema)
    insert(store, queue="q")
    params = JobClaimParams("w1", NOW, 10, 30.0)

    def full_claim() -> list[int]:  # the claim's path when controls or singleton jobs apply
        result = observer._engine.run(lambda conn: _pg_claim.claim_jobs(conn, params))
        return [job.id for job in result.jobs]

    results: list[list[int]] = []
    with store.transaction():  # the pause, not yet committed, holds the controls lock
        store.control_pause("q", True, NOW)
        work = (lambda: claim(observer)) if path == "one-statement" else full_claim
        claimer = threading.Thread(target=lambda: results.append(work()))
        claimer.start()
        wait_until(lambda: _waiting_for_advisory_lock(observer), timeout=10,
                   message="the claim waits for the controls lock")
    claimer.join(10)
    assert results == [[]], "a claim that waited for the pause started a job of the paused queue"
    store.control_pause("q", False, NOW)
    assert len(claim(observer)) == 1


def test_a_plain_success_recorded_twice_is_reported_recorded_both_times(open_store) -> None:
    store = open_store()
    job_id = insert(store)
    (job,) = store.job_claim(JobClaimParams("w1", NOW, 1, 30.0)).jobs
    done = JobFinish(job.id, job.fence, NOW, JobState.SUCCEEDED)
    assert store.job_finish_many([done]) == [True]
    # e.g. a retry of a batch whose reply was lost: the same attempt's success, recorded once
    assert store.job_finish_many([done]) == [True]
    stale = JobFinish(job.id, job.fence - 1, NOW, JobState.SUCCEEDED)
    assert store.job_finish_many([stale]) == [False]
    finished = store.job_get(job_id)
    assert finished is not None and finished.state == JobState.SUCCEEDED


def test_sessions_end_transactions_left_idle(open_store) -> None:
    store = open_store()
    with store.transaction() as conn:
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("10s",)
        assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
        assert conn.execute("SHOW random_page_cost").fetchone() == ("1.1",)
    tuned = open_store(options="-c random_page_cost=2")  # the URL's own options win
    with tuned.transaction() as conn:
        assert conn.execute("SHOW random_page_cost").fetchone() == ("2",)


def test_a_batch_of_finishes_looks_its_jobs_up_by_id(open_store) -> None:
    """Recording a batch of successes must not read the whole jobs table (it did: ~2 ms per
    batch at 20,000 rows, more as retention keeps more), whatever the statistics say."""
    from oncely.sql import load_queries

    store = open_store()
    store.job_insert_many([JobInsert(task="bulk") for _ in range(4_000)], NOW)
    with store.transaction() as conn:  # statistics of a drain's start: nothing running yet
        conn.execute("ANALYZE oncely_jobs")
    store.job_insert_many([JobInsert(task="bulk") for _ in range(16_000)], NOW)
    jobs = store.job_claim(JobClaimParams("w1", NOW, 144, 30.0)).jobs
    query = load_queries("oncely.store.postgres", "sql")["job_finish_plain_many"]
    params = {"job_ids": [job.id for job in jobs], "fences": [job.fence for job in jobs],
              "results": ["null"] * len(jobs), "finished_at": [NOW] * len(jobs), "wake": False}
    with store.transaction() as conn:
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, params))
    assert len(jobs) == 144 and "oncely_jobs_pkey" in plan, plan
    assert "Seq Scan on oncely_jobs" not in plan, plan


# schemas ----------------------------------------------------------------------------------------


def test_the_schema_parameter_isolates_two_stores_in_one_database(open_store) -> None:
    first = open_store()
    second = open_store()
    assert first.schema != second.schema
    assert second.wait_for_work(0) is False

    job_id = insert(first, unique_key="same-key")
    assert second.job_list(JobFilter()) == []
    assert second.wait_for_work(0.5) is False  # the channel is shared, the payload is not ours
    assert insert(second, unique_key="same-key") > 0  # no dedup across schemas
    assert claim(first) == [job_id]

    for store in (first, second):
        result = store.slot_enqueue(SlotEnqueue("hourly", NOW, NOW, job=JobInsert(task="h")))
        assert result.created
    assert first.schema_version() == second.schema_version() == latest_version("postgres")


def test_schema_and_pool_parameters_are_validated(base_url: str) -> None:
    for bad in ("1abc", "a-b", "x;drop", "a" * 64):
        with pytest.raises(InvalidURL):
            PostgresStore(with_query(base_url, schema=bad))
    for bad in ("0", "-1", "many"):
        with pytest.raises(InvalidURL):
            PostgresStore(with_query(base_url, pool_max=bad))
    for bad in ("maybe", ""):
        with pytest.raises(InvalidURL, match="listen"):
            PostgresStore(with_query(base_url, listen=bad))
    store = PostgresStore(with_query(base_url, schema="Mixed_Case", pool_max="3"))
    assert store.schema == "mixed_case"


# failures ---------------------------------------------------------------------------------------


def test_an_unreachable_server_fails_fast_in_one_line() -> None:
    store = PostgresStore("postgresql://oncely:secret@127.0.0.1:1/jobs?schema=nowhere")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            store.job_get(1)
        assert time.monotonic() - started < 5.0
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith("cannot connect to PostgreSQL at 127.0.0.1:1/jobs: ")
        assert message.endswith("; is the server running?")
        assert "secret" not in message
        with pytest.raises(StoreUnavailable):
            store.migrate()
        assert store.wait_for_work(0.2) is False
    finally:
        store.close()


def _terminate(base_url: str, application_name: str) -> int:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (application_name,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def test_the_pool_recovers_after_its_connections_are_terminated(open_store, base_url) -> None:
    name = f"oncely_t_{uuid.uuid4().hex[:12]}"
    store = open_store(application_name=name)
    producer = open_store(schema=store.schema)
    threads = [threading.Thread(target=lambda: insert(store)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.wait_for_work(0) is False  # the LISTEN connection is one of them

    assert _terminate(base_url, name) >= 2

    # Every operation after the kill succeeds: dead connections are noticed at checkout.
    for _ in range(10):
        insert(store)
    assert len(store.job_list(JobFilter(limit=100))) == 16
    assert len(claim(store, limit=100)) == 16

    def woken() -> bool:
        insert(producer)
        return store.wait_for_work(0.5)

    wait_until(woken, timeout=10, message="wake-ups after the LISTEN connection was killed")


class _Proxy:
    """A TCP forwarder to the test server that can drop everything and come back, standing in
    for a PostgreSQL restart without touching the real server."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # port accepting until that call returns.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_store_unavailable_during_an_outage_and_back_after_it(open_store, base_url) -> None:
    parts = urlsplit(base_url)
    proxy = _Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxy.start()
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    proxied = urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
    try:
        store = open_store(url=proxied)
        insert(store)
        assert store.wait_for_work(0) is False

        proxy.stop()
        for _ in range(3):  # every call fails at once, none hangs for the pool's timeout
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                insert(store)
            assert time.monotonic() - started < 3.0
            assert "\n" not in str(info.value)
        started = time.monotonic()
        assert store.wait_for_work(0.3) is False
        assert time.monotonic() - started < 3.0

        proxy.start()
        assert insert(store) > 0
        assert len(store.job_list(JobFilter())) == 2
    finally:
        proxy.stop()


def test_a_migration_that_adds_columns_does_not_stop_a_running_store(open_store) -> None:
    """Statements prepared before a migration added columns to the tables they read (the
    server then refuses them: "cached plan must not change result type") are dropped and run
    again, on every pooled connection, instead of failing the worker that was running."""
    import psycopg

    store = open_store(pool_max="4")

    def work(n: int) -> None:  # claims, finishes, reads: statements psycopg prepares
        ids = [insert(store) for _ in range(n)]
        for job in store.job_claim(JobClaimParams("w1", NOW, n, 30.0)).jobs:
            store.job_finish_many([JobFinish(job.id, job.fence, NOW, JobState.SUCCEEDED)])
        assert all(store.job_get(job_id) is not None for job_id in ids)
        assert len(store.job_list(JobFilter(limit=1000))) >= n

    threads = [threading.Thread(target=work, args=(8,)) for _ in range(4)]  # several connections
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with psycopg.connect(store.target.conninfo, autocommit=True) as admin:
        admin.execute("ALTER TABLE oncely_jobs ADD COLUMN added_later INTEGER")
        admin.execute("ALTER TABLE oncely_leases ADD COLUMN added_later INTEGER")
    failures: list[BaseException] = []

    def after() -> None:
        try:
            work(8)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=after) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert store.job_counts()


def test_a_connection_given_back_in_autocommit_is_closed_not_reused(open_store) -> None:
    """A pooled connection returned still in autocommit would run the next transaction as
    separate autocommitted statements: it is closed instead (the pool opens another), and the
    connection the store hands out next runs transactions."""
    store = open_store(pool_max="1")
    insert(store)
    engine = store._engine
    pool, conn = engine._checkout()
    conn.autocommit = True
    engine._give_back(pool, conn)
    assert conn.closed
    with engine.transaction() as again:
        assert again is not conn and not again.autocommit
    assert store.job_get(insert(store)) is not None


def test_calls_one_after_another_run_on_the_connection_given_back_last(open_store) -> None:
    """The pool keeps idle connections first in, first out; the engine hands out the one given
    back last instead, so a caller making one call after another stays on one server process
    however many idle connections the pool holds."""
    store = open_store(pool_max="4")
    engine = store._engine
    held = [engine._checkout() for _ in range(3)]  # the pool opens three connections
    for pool, conn in held:
        engine._give_back(pool, conn)

    def backend() -> int:
        with engine.transaction() as conn:
            return int(conn.info.backend_pid)

    assert len({backend() for _ in range(6)}) == 1
    insert(store)
    assert len({backend() for _ in range(3)}) == 1


def test_a_caller_waiting_on_a_full_pool_gets_the_connection_given_back(open_store) -> None:
    """With every connection in use, a caller waits on the pool; the connection given back then
    goes to that caller, not to the engine's slot where nobody would take it (the caller would
    wait out the pool's timeout)."""
    store = open_store(pool_max="1")
    engine = store._engine
    done: list[int] = []
    with engine.transaction():
        waiter = threading.Thread(target=lambda: done.append(insert(store)), daemon=True)
        waiter.start()
        wait_until(lambda: engine._asking == 1, timeout=10, message="the caller waits")
    waiter.join(10)
    assert done and store.job_get(done[0]) is not None


def test_the_claim_gate_keeps_generic_plans_and_gives_them_back_on_rollback(open_store) -> None:
    """Every claim calls ``oncely_claim_blocked``; planned afresh on each call its three queries
    cost more than running them. Since version 10 the function keeps generic plans, whatever
    the session's own ``plan_cache_mode``; migrating below 10 restores the server's choice."""
    store = open_store()

    def settings() -> list[str]:
        with store.transaction() as conn:
            row = conn.execute(
                "SELECT p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = current_schema() AND p.proname = 'oncely_claim_blocked'"
            ).fetchone()
        return [item for item in row[0] or [] if not item.startswith("search_path=")]

    assert settings() == ["plan_cache_mode=force_generic_plan"]
    with store.transaction() as conn:  # it answers as before, under any session setting
        conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        blocked = conn.execute("SELECT oncely_claim_blocked(now(), NULL, NULL)").fetchone()
    assert blocked == (False,)
    store.migrate(to=9)
    assert settings() == []
    store.migrate()
    assert settings() == ["plan_cache_mode=force_generic_plan"]


# attempts on job rows (migration 0011) --------------------------------------------------------


def _attempts(store: PostgresStore, relation: str = "oncely_attempts") -> list[tuple[Any, ...]]:
    """Every recorded attempt: version 10 keeps them all in oncely_executions."""
    with store.transaction() as conn:
        return [tuple(row) for row in conn.execute(
            "SELECT id, job_id, attempt, fence, worker_id, run_at, started_at, ended_at, outcome,"
            f" error_kind FROM {relation} ORDER BY id")]


def _history_rows(store: PostgresStore) -> int:
    with store.transaction() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM oncely_executions").fetchone()[0])


def _start(store: PostgresStore, job_ids: list[int], owner: str, at: datetime) -> list[Any]:
    """Start the jobs as any release's claim does (the columns every version has)."""
    with store.transaction() as conn:
        conn.execute("UPDATE oncely_jobs SET state = 'running', attempt = attempt + 1, "
                     "fence = fence + 1, lease_owner = %s, lease_expires_at = %s, "
                     "started_at = %s WHERE id = ANY(%s)",
                     (owner, at + timedelta(seconds=30), at, job_ids))
    return [store.job_get(job_id) for job_id in job_ids]


def _work(store: PostgresStore) -> None:
    """A job retried once, then succeeded; a failed one; one still running."""
    retried, failed = insert(store, max_attempts=2), insert(store, max_attempts=1)
    first, other = _start(store, [retried, failed], "w1", NOW)
    later = NOW + timedelta(seconds=2)
    assert store.job_finish(JobFinish(retried, first.fence, later, JobState.RETRYABLE,
                                      retry_at=later))
    assert store.job_finish(JobFinish(failed, other.fence, later, JobState.FAILED))
    (again,) = _start(store, [retried], "w2", later)
    assert store.job_finish(JobFinish(retried, again.fence, later + timedelta(seconds=1),
                                      JobState.SUCCEEDED))
    _start(store, [insert(store)], "w3", later)


def test_the_migration_moves_latest_attempts_onto_job_rows_and_back(open_store) -> None:
    """Attempts recorded by version 10's trigger keep their ids and fields through version 11
    and back; on version 11 only the attempt that gave way is a row of oncely_executions."""
    store = open_store()
    store.migrate(to=10)
    _work(store)
    recorded = _attempts(store, "oncely_executions")
    assert [row[8] for row in recorded] == ["retryable", "failed", "succeeded", None]
    store.migrate(to=11)
    assert _attempts(store) == recorded
    assert [(e.id, e.outcome) for e in store.execution_list(limit=10)][-1] == (
        recorded[0][0], "retryable")
    assert _history_rows(store) == 1  # the retried job's first attempt
    store.migrate(to=10)
    assert _attempts(store, "oncely_executions") == recorded
    store.migrate()
    retried = insert(store, max_attempts=2)
    (job,) = store.job_claim(JobClaimParams("w4", NOW, 1, 30.0)).jobs
    assert store.job_finish(JobFinish(retried, job.fence, NOW, JobState.RETRYABLE, retry_at=NOW))
    (job,) = store.job_claim(JobClaimParams("w5", NOW, 1, 30.0)).jobs
    assert store.job_finish(JobFinish(retried, job.fence, NOW, JobState.SUCCEEDED))
    assert [(row[4], row[8]) for row in _attempts(store)[4:]] == [
        ("w4", "retryable"), ("w5", "succeeded")]


def test_a_claim_that_does_not_number_its_attempt_still_records_it(open_store) -> None:
    """An older release's claim sets no execution_id: the trigger numbers the attempt, so it is
    recorded all the same (a rolling deploy)."""
    store = open_store()
    job_id = insert(store)
    with store.transaction() as conn:
        conn.execute("UPDATE oncely_jobs SET state = 'running', attempt = 1, fence = fence + 1, "
                     "lease_owner = 'old-release', lease_expires_at = %s, started_at = %s "
                     "WHERE id = %s", (NOW + timedelta(seconds=30), NOW, job_id))
    (run,) = store.execution_list(job_id=job_id)
    assert (run.worker_id, run.attempt, run.started_at, run.outcome) == (
        "old-release", 1, NOW, None)
    job = store.job_get(job_id)
    assert job is not None
    assert store.job_finish(JobFinish(job_id, job.fence, NOW + timedelta(seconds=1),
                                      JobState.SUCCEEDED))
    (done,) = store.execution_list(job_id=job_id)
    assert (done.id, done.outcome, done.ended_at) == (run.id, "succeeded",
                                                       NOW + timedelta(seconds=1))


def test_the_newest_attempts_are_read_in_index_order(open_store) -> None:
    """A task's newest attempts (the dashboard, the watchdog's durations) are read from each part
    of the history in start order, never by sorting every job's attempt."""
    from oncely.sql import load_queries

    store = open_store()
    store.job_insert_many([JobInsert(task="bulk") for _ in range(20_000)], NOW)
    for second in range(100):  # claims of 200, a second apart
        store.job_claim(JobClaimParams("w1", NOW + timedelta(seconds=second), 200, 30.0))
    queries = load_queries("oncely.store.postgres", "sql")
    with store.transaction() as conn:
        conn.execute("ANALYZE oncely_jobs")
        plans = {name: "\n".join(row[0] for row in conn.execute("EXPLAIN " + queries[name], params))
                 for name, params in (
                     ("execution_list", {"job_id": None, "task": "bulk", "limit": 50}),
                     ("execution_list_durations", {"task": "bulk", "limit": 50}))}
    for name, plan in plans.items():
        assert "Seq Scan on oncely_jobs" not in plan, (name, plan)
    assert len(store.execution_list(task="bulk", limit=50)) == 50
