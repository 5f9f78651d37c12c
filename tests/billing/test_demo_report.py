"""The demo's report shows each phase's store as oncely shows every URL: through the engine's one
masking function, so a password in the userinfo or in a query parameter never reaches
``report.json`` or ``report.html``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oncely import redaction
from oncely_billing.demo import report
from oncely_billing.demo.dataset import phase_urls
from oncely_billing.demo.phase import PhaseRun
from oncely_billing.demo.plan import Plan, phases


@pytest.mark.parametrize("store", [
    "postgresql://u@db/x?password=s3cret",
    "postgresql://u:s3cret@db/x",
    "postgresql://u@db/x?sslpassword=s3cret&sslmode=require",
])
def test_a_phase_store_is_shown_masked(store: str, tmp_path: Path) -> None:
    plan = Plan(orgs=10, workers=1, hours=5, speed=1200, store=store, out=tmp_path, quick=True)
    configs = dict(zip(report.PHASES, phases(plan), strict=True))
    for name, url in phase_urls(plan).items():
        assert "s3cret" in url  # the phase's real URL keeps it: the workers need it
        entry = report.phase_entry(plan, PhaseRun(configs[name], url), {"figures": 1})
        assert "s3cret" not in json.dumps(entry), entry["store"]
        assert entry["store"] == redaction.mask_url(url) and "***" in entry["store"]
        assert entry["store"].startswith("postgresql://u") and "schema=oncely_demo_" in url
