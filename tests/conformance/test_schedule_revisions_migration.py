"""Schema version 7 (schedule revisions, worker declarations, the ``paused`` slot outcome) and its
down step, executed as files on every store: down undoes it keeping the data (a paused slot
becomes missed), and up applies again on the data down left."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

from oncely import sql
from oncely.store import open_store
from oncely.store.params import ScheduleUpsert, SlotEnqueue
from oncely.types import SlotOutcome

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
FOLDER = {"sqlite": "oncely.store.sqlite", "postgresql": "oncely.store.postgres"}


def _script(dialect: str, name: str) -> str:
    return resources.files(FOLDER[dialect]).joinpath("migrations", name).read_text("utf-8")


def _run(store, script: str) -> None:
    with store.transaction() as conn:
        for statement in sql.split_statements(script):
            conn.execute(statement)


def _columns(store, table: str) -> set[str]:
    with store.transaction() as conn:
        cursor = conn.execute(f"SELECT * FROM {table} LIMIT 0")
        return {column[0] for column in cursor.description}


def test_version_7_down_and_up_again(any_url):
    store = open_store(any_url)
    store.migrate()
    store.schedule_upsert(ScheduleUpsert("s", "t", {"name": "s", "task": "t", "every": 60},
                                         "h1", NOW))
    store.slot_enqueue(SlotEnqueue("s", NOW, NOW, outcome=SlotOutcome.PAUSED))
    assert {"revision", "hashes", "origin", "paused_at", "switch_cursor"} <= _columns(
        store, "oncely_schedules")
    _run(store, _script(store.dialect, "0007_schedule_revisions.down.sql"))
    assert "revision" not in _columns(store, "oncely_schedules")
    assert "declared" not in _columns(store, "oncely_workers")
    with store.transaction() as conn:
        outcome = conn.execute("SELECT outcome FROM oncely_slots").fetchone()[0]
    assert outcome == "missed"
    _run(store, _script(store.dialect, "0007_schedule_revisions.sql"))
    [row] = store.schedule_list()
    assert (row.revision, row.hashes, row.origin) == (1, ("h1",), "declared")
    store.slot_enqueue(SlotEnqueue("s", NOW.replace(hour=11), NOW, outcome=SlotOutcome.PAUSED))
    store.close()
