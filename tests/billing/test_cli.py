"""``oncely metering`` commands, standalone and attached to a parent group."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.testing import CliRunner

from oncely_billing import migrations
from oncely_billing.cli import metering


def invoke(*args: str, env: dict[str, str] | None = None) -> dict:
    result = CliRunner().invoke(metering, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else {"output": result.output}


def test_seed_migrate_run_and_show(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'o.db'}"
    usage = tmp_path / "u.duckdb"
    base = ["--database-url", store, "--usage", f"duckdb:///{usage}", "--json"]
    assert "applied" in invoke(*base, "migrate")
    report = invoke(*base, "seed", "--orgs", "60", "--seed", "4", "--usage", str(usage),
                    "--days", "3", "--end", "2026-03-30T10:40:00")
    assert report["orgs"] == 60 and report["anchor_days"] == 31 and report["events"] > 0
    run = invoke(*base, "run-thresholds", env={"ONCELY_METERING_ENFORCE": "1"})
    assert run["mode"] == "full" and run["source_queries"] == 1
    shown = invoke(*base, "orgs", "show", "7")
    assert shown["id"] == 7 and shown["ingestion"] in ("allowed", "blocked")
    assert shown["recipients"][0] == "user1@org7.example.com"
    queued = invoke(*base, "run-thresholds", "--enqueue")
    assert queued["created"] is True and queued["queue"] == "billing"

    again = CliRunner().invoke(metering, [*base, "seed", "--orgs", "5", "--usage", str(usage)])
    assert again.exit_code != 0 and "--replace" in str(again.exception)
    table = invoke("--database-url", store, "orgs", "show", "7")["output"]
    assert "organization 7" in table and "cycle_usage" in table


def test_attached_to_a_parent_group(tmp_path: Path) -> None:
    class Env:  # what the engine's CLI passes down
        database_url = f"sqlite:///{tmp_path / 'o.db'}"
        app_path = None
        as_json = True

    @click.group()
    @click.pass_context
    def parent(ctx: click.Context) -> None:
        ctx.obj = Env()

    parent.add_command(metering)
    result = CliRunner().invoke(parent, ["metering", "migrate"], catch_exceptions=False)
    latest = migrations.latest_version("sqlite")
    assert result.exit_code == 0 and json.loads(result.output)["to_version"] == latest
    assert (tmp_path / "o.db").exists()


def test_run_thresholds_is_refused_while_a_run_holds_the_lease(tmp_path: Path) -> None:
    """``run-thresholds`` runs through app.run_now: while another run holds the singleton lease
    it is refused with SingletonBusy and leaves no job behind for a worker to run later."""
    import oncely
    from oncely.store.params import JobClaimParams
    from oncely_billing import THRESHOLDS_TASK, build_app

    store = f"sqlite:///{tmp_path / 'o.db'}"
    usage = tmp_path / "u.duckdb"
    base = ["--database-url", store, "--usage", f"duckdb:///{usage}", "--json"]
    invoke(*base, "migrate")
    invoke(*base, "seed", "--orgs", "20", "--seed", "4", "--usage", str(usage), "--days", "2",
           "--end", "2026-03-30T10:40:00")
    app = build_app(store, usage_source=f"duckdb:///{usage}")
    holder = app.enqueue(THRESHOLDS_TASK)
    claim = JobClaimParams("other-worker", app.clock.now(), 1, 300.0, ("billing",))
    assert [job.id for job in app.store.job_claim(claim).jobs] == [holder.id]
    refused = CliRunner().invoke(metering, [*base, "run-thresholds"])
    assert isinstance(refused.exception, oncely.SingletonBusy), refused.output
    assert "in progress" in str(refused.exception) and "other-worker" in str(refused.exception)
    assert [job.id for job in app.read.jobs(task=THRESHOLDS_TASK)] == [holder.id]
    app.close()
