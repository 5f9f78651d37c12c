"""Conformance: a slot backlog that waited (its queue paused) is judged at claim time by the
schedule policies its jobs carry, on every store, with the frozen clock."""

from __future__ import annotations

from datetime import timedelta
from importlib import resources

from tests.conformance.conftest import Kit

from oncely.store.base import Store
from oncely.store.params import JobClaimParams
from oncely.types import JobState, Overlap

HOUR = timedelta(hours=1)


def _backlog(kit: Kit, catch_up: str, overlap: Overlap = Overlap.SKIP, hours: int = 6) -> list[int]:
    """An hourly schedule's slots enqueued on time while nothing claimed them."""
    ids = []
    for _ in range(hours):
        result = kit.slot("hourly", kit.now(), key="hourly", overlap=overlap,
                          catch_up=catch_up, misfire_grace=60.0)
        ids.append(result.job_id or 0)
        kit.clock.advance(HOUR)
    return ids


def _outcomes(kit: Kit) -> dict[int, tuple[str, str | None]]:
    return {row.job_id or 0: (str(row.outcome), row.note)
            for row in kit.store.ledger_list("hourly", 100)}


def test_latest_runs_only_the_newest_waiting_slot(kit: Kit) -> None:
    ids = _backlog(kit, "latest")
    result = kit.claim(limit=10)
    assert [job.id for job in result.jobs] == [ids[-1]]
    assert sorted(ended.job_id for ended in result.policy_ended) == sorted(ids[:-1])
    outcomes = _outcomes(kit)
    for job_id in ids[:-1]:
        outcome, note = outcomes[job_id]
        assert outcome == "coalesced" and note is not None and "catch_up=latest" in note
        assert kit.get(job_id).state == JobState.CANCELLED


def test_none_records_slots_past_their_grace_as_missed(kit: Kit) -> None:
    ids = _backlog(kit, "none")
    result = kit.claim(limit=10)
    assert result.jobs == []
    assert {kit.get(job_id).state for job_id in ids} == {JobState.CANCELLED}
    assert {outcome for outcome, _ in _outcomes(kit).values()} == {"missed"}


def test_buffer_one_keeps_one_run_and_one_buffered(kit: Kit) -> None:
    ids = _backlog(kit, "all", Overlap.BUFFER_ONE)
    result = kit.claim(limit=10)
    assert [job.id for job in result.jobs] == [ids[0]]
    assert kit.get(ids[1]).state in (JobState.AVAILABLE, JobState.SCHEDULED)
    ended = {e.job_id: str(e.outcome) for e in result.policy_ended}
    assert ended == {job_id: "skipped_overlap" for job_id in ids[2:]}


def test_a_job_of_a_task_the_worker_lacks_waits_for_one_that_has_it(kit: Kit) -> None:
    job = kit.insert("exotic")
    params = JobClaimParams("w1", kit.now(), 10, kit.ttl, None, ("common",))
    assert kit.store.job_claim(params).jobs == []
    assert kit.get(job.id).state == JobState.AVAILABLE
    params = JobClaimParams("w2", kit.now(), 10, kit.ttl, None, ("common", "exotic"))
    assert [claimed.id for claimed in kit.store.job_claim(params).jobs] == [job.id]


def test_a_slot_job_of_a_task_the_worker_lacks_is_not_judged_or_taken(kit: Kit) -> None:
    ids = _backlog(kit, "latest", hours=2)
    params = JobClaimParams("w1", kit.now(), 10, kit.ttl, None, ("other",))
    result = kit.store.job_claim(params)
    assert result.jobs == [] and result.policy_ended == []
    assert kit.get(ids[0]).state in (JobState.AVAILABLE, JobState.SCHEDULED)


def _columns(store: Store, table: str) -> set[str]:
    with store.transaction() as conn:
        if store.dialect == "sqlite":
            return {row[1] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = %s AND table_schema = current_schema()", (table,)).fetchall()
        return {row[0] for row in rows}


def test_version_8_goes_down_and_up_again(store: Store) -> None:
    package = f"oncely.store.{'sqlite' if store.dialect == 'sqlite' else 'postgres'}"
    folder = resources.files(package).joinpath("migrations")
    down = folder.joinpath("0008_claim_policies.down.sql").read_text()
    up = folder.joinpath("0008_claim_policies.sql").read_text()
    added = {"catch_up", "misfire_grace"}
    assert added <= _columns(store, "oncely_jobs")
    with store.transaction() as conn:
        store.sql.run(conn, down)  # type: ignore[attr-defined]
    assert not added & _columns(store, "oncely_jobs")
    assert not {"tasks", "clock_offset"} & _columns(store, "oncely_workers")
    with store.transaction() as conn:
        store.sql.run(conn, up)  # type: ignore[attr-defined]
    assert added <= _columns(store, "oncely_jobs")
