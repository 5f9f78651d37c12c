"""``oncely demo``: the shortened run end to end (real worker processes, both phases), its report's
invariants read from ``report.json``, and the command's failure paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import ROOT

from oncely_billing.demo.measure import invariants
from oncely_billing.demo.report import watchdog_cell

# The demo runs once per module (fixture below): keep its tests together on one xdist worker.
pytestmark = pytest.mark.xdist_group("demo")


def run_demo(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ONCELY_")}
    return subprocess.run([sys.executable, "-m", "oncely", "demo", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


Quick = tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]
_RUNS: dict[str, Quick] = {}


@pytest.fixture
def quick(tmp_path_factory: pytest.TempPathFactory) -> Quick:
    # One demo run per test process, kept here rather than in a module-scoped fixture: pytest-xdist
    # may tear module fixtures down between two tests of the same group.
    if "quick" not in _RUNS:
        out = tmp_path_factory.mktemp("demo")
        result = run_demo("--quick", "--out", str(out))
        report_file = out / "report.json"
        assert report_file.exists(), (f"no report.json; exit {result.returncode}\n"
                                      f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        _RUNS["quick"] = (result, json.loads(report_file.read_text()), out)
    return _RUNS["quick"]


@pytest.mark.timeout(180)
def test_quick_demo_exits_0_with_every_guarded_invariant_held(quick):
    result, report, _ = quick
    story = f"\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    assert result.returncode == 0, f"reason: {report['reason']}{story}"
    assert report["passed"] and report["reason"] is None
    assert all(check["held"] for check in report["invariants"]), report["invariants"]
    assert "oncely demo: the same billing day, unsafe and guarded" in result.stdout


@pytest.mark.timeout(180)
def test_guarded_run_is_one_run_per_slot_and_unsafe_run_is_not(quick):
    _, report, _ = quick
    guarded, unsafe = report["phases"]["guarded"], report["phases"]["unsafe"]
    assert set(guarded["schedules"]) == {"free-tier-thresholds", "metering-stripe-usage"}
    for name, figures in guarded["schedules"].items():
        assert figures["ratio"] == 1.0, (name, figures)
        assert figures["runs"] == figures["expected"] > 0, (name, figures)
        assert figures["max_runs_per_slot"] == 1, (name, figures)
        assert figures["overlapping_starts"] == 0, (name, figures)
        assert figures["not_tied_to_a_slot"] == 0, (name, figures)
        assert figures["slots_not_ran"] == [] and figures["slots_missing_from_ledger"] == 0
    for name, figures in unsafe["schedules"].items():
        assert figures["ratio"] > 1, (name, figures)
        assert figures["not_tied_to_a_slot"] > 0, (name, figures)  # the start-up enqueues


@pytest.mark.timeout(180)
def test_unsafe_run_reproduces_the_write_explosion_and_guarded_run_does_not(quick):
    result, report, _ = quick
    orgs = report["options"]["orgs"]
    unsafe, guarded = report["phases"]["unsafe"], report["phases"]["guarded"]
    blown, kept = unsafe["write_explosion"], guarded["write_explosion"]
    # the engine's multiplier, then the job's: every run that wrote rewrote every organization
    assert blown["runs_per_slot"] > 1 and kept["runs_per_slot"] == 1.0, (blown, kept)
    assert unsafe["org_writes"]["batch_rows_min"] == orgs, unsafe["org_writes"]
    assert unsafe["org_writes"]["batch_rows_max"] == orgs, unsafe["org_writes"]
    assert blown["rows_per_run"] > orgs / 2, blown
    assert kept["rows_per_batch_max"] < orgs / 2 and kept["rows_per_run"] < orgs / 2, kept
    assert blown["writes_per_slot"] == round(blown["runs_per_slot"] * blown["rows_per_run"])
    assert blown["writes_per_slot"] > 2 * orgs > 10 * kept["writes_per_slot"], (blown, kept)
    assert unsafe["org_writes"]["per_hour_max"] > orgs, unsafe["org_writes"]
    # the incident's emails go out before its state commits: overlapping runs send them again
    surges = len({surge["org_id"] for surge in report["dataset"]["surges"]})
    assert surges >= 3
    assert unsafe["emails"]["sent_more_than_once"] > 0, unsafe["emails"]
    assert guarded["emails"]["sent_more_than_once"] == 0, guarded["emails"]
    assert guarded["emails"]["distinct_notifications"] >= 2 * surges, guarded["emails"]
    assert "x org rows written per run" in result.stdout
    assert "emails sent / sent more than once" in result.stdout


@pytest.mark.timeout(180)
def test_watchdog_flags_the_unsafe_run_and_not_the_guarded_one(quick):
    _, report, _ = quick
    unsafe = report["phases"]["unsafe"]["watchdog"]
    guarded = report["phases"]["guarded"]["watchdog"]
    flagged = unsafe["raised_during_run"] + unsafe["final_check"]
    assert any(item["kind"] == "too_many" for item in flagged), flagged
    assert guarded["raised_during_run"] == [] and guarded["final_check"] == [], guarded
    assert watchdog_cell(report["phases"]["guarded"]) == "nothing"


@pytest.mark.timeout(180)
def test_guarded_run_sends_no_duplicate_and_survives_its_faults(quick):
    _, report, out = quick
    guarded = report["phases"]["guarded"]
    assert guarded["emails"]["duplicates"] == 0
    assert guarded["stripe"]["duplicate_identifiers_accepted"] == 0
    assert report["phases"]["unsafe"]["stripe"]["duplicate_identifiers_accepted"] == 0
    assert guarded["stripe"]["hours_billed_in_day"] == guarded["stripe"]["hours_due"] > 0
    timeline = " | ".join(note["what"] for note in guarded["timeline"])
    for fault in ("SIGKILL", "SIGSTOP", "SIGCONT"):
        assert fault in timeline, timeline
    assert sum(s["handed_over"] for s in guarded["schedules"].values()) >= 2, guarded
    assert guarded["fenced_writes_rejected"] >= 1, "the zombie's writes were not refused"
    unsafe_timeline = [note["what"] for note in report["phases"]["unsafe"]["timeline"]]
    assert sum("restart" in what for what in unsafe_timeline) == 3, unsafe_timeline
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 6 and "expected" in html


def test_invariants_name_what_broke():
    figures = {"runs": 7, "expected": 6, "max_runs_per_slot": 2, "not_tied_to_a_slot": 0,
               "overlapping_starts": 1, "slots_not_ran": ["2026-03-10T02:35:00+00:00"]}
    guarded = {
        "schedules": {"free-tier-thresholds": figures},
        "emails": {"duplicates": 1},
        "stripe": {"duplicate_identifiers_accepted": 0},
        "watchdog": {"raised_during_run": [{"kind": "too_many", "summary": "too many"}],
                     "final_check": []},
    }
    broken = {name for name, held, _ in invariants(guarded) if not held}
    assert broken == {"free-tier-thresholds: one run per slot (ratio 1.0)",
                      "free-tier-thresholds: no overlapping runs",
                      "free-tier-thresholds: every due slot ran, in the ledger",
                      "no duplicate email", "watchdog quiet"}


def test_bad_options_are_one_line_errors_with_exit_code_2():
    result = run_demo("--workers", "1", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--workers" in result.stderr and "Traceback" not in result.stderr
    result = run_demo("--store", "mysql://nowhere/db", "--quick", timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "oncely: error: --store" in result.stderr
