"""What only the SQLite store has: its URLs, file errors, pragmas, lock contention, in-memory
databases, schema checks against a raw file, and wake-ups through ``PRAGMA data_version``."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from oncely.errors import InvalidURL, SchemaMismatch, StoreBusy, StoreUnavailable
from oncely.store import open_store
from oncely.store.migrations import latest_version
from oncely.store.params import JobClaimParams, JobFilter, JobInsert, MigrateResult
from oncely.store.sqlite import SQLiteStore
from oncely.store.sqlite.dialect import QUERIES

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def poll_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'oncely.db'}"


# URLs and files --------------------------------------------------------------------------------


def test_relative_absolute_and_memory_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///relative.db")
    relative.migrate()
    assert (tmp_path / "relative.db").is_file()
    absolute_path = tmp_path / "absolute.db"
    assert absolute_path.is_absolute()
    absolute = open_store(f"sqlite:///{absolute_path}")  # four slashes: sqlite:////tmp/…
    absolute.migrate()
    assert (tmp_path / "absolute.db").is_file()
    memory = open_store("sqlite://:memory:")
    memory.migrate()
    assert memory.job_insert(JobInsert(task="t"), NOW).created
    for store in (relative, absolute, memory):
        assert store.dialect == "sqlite"
        store.close()


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///x.db?mode=ro", "sqlite:///dir/"],
)
def test_malformed_urls_are_invalid(url: str) -> None:
    with pytest.raises(InvalidURL):
        SQLiteStore(url)


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "notes.db"
    junk.write_text("these are not the pages you are looking for\n" * 200)
    with pytest.raises(StoreUnavailable, match="is not a SQLite database"):
        SQLiteStore(f"sqlite:///{junk}").migrate()


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist") as caught:
        SQLiteStore(f"sqlite:///{tmp_path / 'nowhere' / 'oncely.db'}")
    assert "\n" not in str(caught.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="directory"):
        SQLiteStore(f"sqlite:///{tmp_path}")


def test_wal_mode_and_pragmas(db_url: str, tmp_path: Path) -> None:
    store = SQLiteStore(db_url)
    store.migrate()
    with store.transaction() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 0
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    store.close()
    raw = sqlite3.connect(tmp_path / "oncely.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


# schema ----------------------------------------------------------------------------------------


def test_unmigrated_database_says_run_migrate(db_url: str) -> None:
    store = SQLiteStore(db_url)
    assert store.schema_version() == 0
    with pytest.raises(SchemaMismatch, match=r"version 0.*run `oncely migrate`"):
        store.check_schema()
    with pytest.raises(SchemaMismatch, match="oncely migrate"):
        store.job_insert(JobInsert(task="t"), NOW)
    result = store.migrate()
    assert (result.from_version, result.to_version) == (0, latest_version("sqlite"))
    assert result.applied and result.applied[0].startswith("0001")
    store.check_schema()


def test_newer_database_is_refused(db_url: str, tmp_path: Path) -> None:
    store = SQLiteStore(db_url)
    store.migrate()
    raw = sqlite3.connect(tmp_path / "oncely.db")
    raw.execute("INSERT INTO oncely_schema_migrations VALUES (999, 'future', 0)")
    raw.commit()
    raw.close()
    with pytest.raises(SchemaMismatch, match=r"newer than this oncely.*upgrade oncely"):
        store.check_schema()
    with pytest.raises(SchemaMismatch, match="newer"):
        store.migrate()


def test_concurrent_migrations_apply_once(db_url: str) -> None:
    stores = [SQLiteStore(db_url) for _ in range(4)]
    results: list[MigrateResult] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.migrate())) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 4
    assert sum(len(r.applied) for r in results) == latest_version("sqlite")
    for store in stores:
        store.check_schema()
        store.close()


# locking ---------------------------------------------------------------------------------------


def test_store_busy_after_the_retry_budget(db_url: str, tmp_path: Path) -> None:
    store = SQLiteStore(db_url, busy_budget=0.3)
    store.migrate()
    blocker = sqlite3.connect(tmp_path / "oncely.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreBusy, match="locked"):
            store.job_insert(JobInsert(task="t"), NOW)
        assert time.monotonic() - started < 10
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.job_insert(JobInsert(task="t"), NOW).created


def test_writes_wait_out_a_short_lock(db_url: str, tmp_path: Path) -> None:
    store = SQLiteStore(db_url)
    store.migrate()
    blocker = sqlite3.connect(tmp_path / "oncely.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: blocker.execute("COMMIT"))
    release.start()
    try:
        assert store.job_insert(JobInsert(task="t"), NOW).created
    finally:
        release.join()
        blocker.close()


# Queries over waiting and finished jobs and the partial index each one must find.
INDEXED_QUERIES = {
    "job_list_claim_candidates": "oncely_jobs_claim",
    "job_list_claim_candidates_in_queues": "oncely_jobs_claim",
    "job_list_claim_candidates_limited": "oncely_jobs_claim",
    "job_get_waiting_queues": "oncely_jobs_claim",
    "job_count_waiting": "oncely_jobs_claim",
    "job_prune_queue": "oncely_jobs_retention",
    "job_get_finished_queues": "oncely_jobs_retention",
    "job_get_finished_cutoff": "oncely_jobs_retention",
}


@pytest.mark.parametrize("name", sorted(INDEXED_QUERIES))
def test_queries_over_job_states_use_their_partial_index(db_url: str, name: str) -> None:
    """SQLite uses a partial index only for a query that states the index's predicate; the
    predicates were rewritten in version 9, and each query must have followed."""
    store = SQLiteStore(db_url)
    store.migrate()
    store.job_insert(JobInsert(task="t"), NOW)
    values = {"now": 0.0, "page": 10, "queues": '["default"]', "blocked_tasks": "[]",
              "blocked_keys": "[]", "after_id": None, "after_priority": None,
              "after_run_at": None, "queue": "default", "state": "succeeded",
              "finished_before": 0.0, "limit": 10, "skip": 0}
    with store.transaction() as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {QUERIES[name]}", values)]
    reads = [step for step in plan if " oncely_jobs" in step]
    assert reads and all(INDEXED_QUERIES[name] in step or "PRIMARY KEY" in step
                         for step in reads), plan


def test_a_claim_with_nothing_to_start_never_takes_the_write_lock(
    db_url: str, tmp_path: Path
) -> None:
    """Another process holding the write lock (stopped in the middle of a write) does not hold
    up a claim that finds nothing due, nor one whose due job waits for its singleton key."""
    store = SQLiteStore(db_url, busy_budget=0.3)
    store.migrate()
    store.job_insert(JobInsert(task="later", run_at=datetime(2026, 3, 2, 10, tzinfo=UTC)), NOW)
    store.job_insert(JobInsert(task="s", singleton_key="k"), NOW)
    [held] = store.job_claim(JobClaimParams("w0", NOW, 1, 30.0)).jobs
    store.job_insert(JobInsert(task="s", singleton_key="k"), NOW)  # waits for k
    blocker = sqlite3.connect(tmp_path / "oncely.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert store.job_claim(JobClaimParams("w1", NOW, 10, 30.0)).jobs == []
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert held.singleton_key == "k"


def test_a_lazy_write_that_lost_its_snapshot_runs_again_under_the_lock(
    db_url: str, tmp_path: Path
) -> None:
    """The claim's transaction reads before it takes the write lock. When another process wrote
    in between, its first write fails and the whole work runs again under the lock, seeing that
    write: one atomic transaction either way."""
    store = SQLiteStore(db_url)
    store.migrate()
    other = sqlite3.connect(tmp_path / "oncely.db", isolation_level=None)
    seen: list[int] = []

    def count_then_write(conn: sqlite3.Connection) -> int:
        count = int(conn.execute("SELECT COUNT(*) FROM oncely_leases").fetchone()[0])
        seen.append(count)
        if len(seen) == 1:  # another process commits after this transaction's first read
            other.execute("INSERT INTO oncely_leases (key, fence) VALUES ('other', 1)")
        conn.execute("INSERT INTO oncely_leases (key, fence) VALUES (?, 1)", (f"k{count}",))
        return count

    assert store._engine.write_if_needed(count_then_write) == 1
    assert seen == [0, 1]
    keys = [row[0] for row in other.execute("SELECT key FROM oncely_leases ORDER BY key")]
    assert keys == ["k1", "other"]
    other.close()


def test_store_calls_inside_a_transaction_join_it(db_url: str) -> None:
    store = SQLiteStore(db_url)
    store.migrate()
    with pytest.raises(RuntimeError), store.transaction():
        store.job_insert(JobInsert(task="joined"), NOW)
        raise RuntimeError("roll it all back")
    assert store.job_list(JobFilter()) == []


def test_closed_store_refuses_work(db_url: str) -> None:
    store = SQLiteStore(db_url)
    store.migrate()
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.job_get(1)


# in-memory -------------------------------------------------------------------------------------


def test_memory_store_is_one_database_for_all_threads() -> None:
    store = SQLiteStore("sqlite://:memory:")
    store.migrate()
    ids = [r.job.id for r in store.job_insert_many([JobInsert(task="m")] * 200, NOW)]
    claimed: list[int] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        while jobs := store.job_claim(JobClaimParams(worker, NOW, 3, 60.0)).jobs:
            with lock:
                claimed.extend(job.id for job in jobs)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed) == sorted(ids)
    store.close()


# wake-ups --------------------------------------------------------------------------------------


def test_wait_for_work_times_out_without_commits(db_url: str) -> None:
    store = SQLiteStore(db_url)
    store.migrate()
    started = time.monotonic()
    assert store.wait_for_work(0.05) is False
    assert time.monotonic() - started >= 0.05
    store.notify_work("default")


@pytest.mark.parametrize("source", ["same store", "other connection"])
def test_wait_for_work_wakes_on_a_commit(db_url: str, tmp_path: Path, source: str) -> None:
    store = SQLiteStore(db_url)
    store.migrate()
    writer = store if source == "same store" else SQLiteStore(db_url)
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(store.wait_for_work(30)))
    waiter.start()
    started = time.monotonic()
    # Keep committing until the waiter notices: it may not have read its baseline yet.
    assert poll_until(lambda: bool(writer.job_insert(JobInsert(task="t"), NOW)) and bool(woke))
    waiter.join(5)
    assert woke == [True]
    assert time.monotonic() - started < 10


def test_wait_for_work_wakes_on_memory_commits() -> None:
    store = SQLiteStore("sqlite://:memory:")
    store.migrate()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(store.wait_for_work(30)))
    waiter.start()
    assert poll_until(lambda: bool(store.job_insert(JobInsert(task="t"), NOW)) and bool(woke))
    waiter.join(5)
    assert woke == [True]
