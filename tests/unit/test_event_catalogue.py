"""Every event the code emits is documented in docs/events.md (and the catalogue names no event
the code never emits)."""

from __future__ import annotations

import re

from tests.conftest import ROOT

LITERAL = re.compile(r"""\.emit\(\s*["']([a-z_]+\.[a-z_.]+)["']""")
FAMILIES = {  # names built at run time: emit(f"job.{outcome.state}") and emit(f"slot.{outcome}")
    "job.": ("job.succeeded", "job.retryable", "job.failed", "job.cancelled"),
    "slot.": ("slot.missed", "slot.coalesced", "slot.paused"),
}
DOCUMENTED = re.compile(r"^\| `([a-z_]+\.[a-z_.]+)`", re.MULTILINE)


def emitted() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "src" / "oncely").rglob("*.py"):
        text = path.read_text()
        names.update(LITERAL.findall(text))
        for prefix, family in FAMILIES.items():
            if f'emit(f"{prefix}{{' in text:
                names.update(family)
    names.update(("anomaly.notified", "anomaly.notify_failed"))  # emitted through a callback
    return {name for name in names if not name.startswith("metering.")}


def test_every_emitted_event_is_documented() -> None:
    catalogue = (ROOT / "docs" / "events.md").read_text()
    documented = set(DOCUMENTED.findall(catalogue))
    found = emitted()
    assert found - documented == set(), "document these events in docs/events.md"
    assert documented - found == set(), "docs/events.md lists events the code never emits"
