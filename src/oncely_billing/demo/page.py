"""``report.html``: one self-contained page — no script, no external file — with the side-by-side
table, an expected-versus-actual chart per schedule and phase (inline SVG), organization writes
per hour, the timeline of faults, the watchdog's findings and the guarded run's invariants.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

ACTUAL = {"unsafe": "#c62828", "guarded": "#2e7d32"}
EXPECTED = "#0d47a1"
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1000px;
       color: #1a1a1a; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .35rem .5rem; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; } th.sub { padding-left: 1.5rem; font-weight: normal; }
.ok { color: #2e7d32; font-weight: 600; } .fail { color: #c62828; font-weight: 600; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
.note { color: #555; }
"""


def render(report: dict[str, Any], rows: list[tuple[str, str, str]]) -> str:
    options = report["options"]
    verdict = ('<p class="ok">The guarded run held every invariant.</p>' if report["passed"]
               else f'<p class="fail">FAILED: {escape(str(report["reason"]))}</p>')
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>oncely demo report</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>oncely demo: the same billing day, unsafe and guarded</h1>",
        f"<p class='note'>{options['orgs']:,} organizations, "
        f"{options['workers']} worker processes, {options['hours']:g} simulated hours per phase "
        f"({escape(options['day_start'])} to {escape(options['day_end'])}) at "
        f"{options['speed']:g}x, {escape(options['store'])} store; oncely "
        f"{escape(report['oncely_version'])}, {escape(report['generated_at'])}, "
        f"{report['seconds']:.0f} s.</p>",
        verdict, comparison(rows),
        "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in report["explanation"])
        + f"<li>{escape(report['stripe_setup']['note'])}.</li></ul>",
        "<h2>Runs per hour: expected against actual</h2>", charts(report),
        "<h2>Organization writes per hour</h2>", writes_chart(report),
        "<h2>Configuration and timeline</h2>", configuration(report),
        "<h2>Watchdog and doctor at the end of each day</h2>", findings(report),
        "<h2>Guarded run invariants</h2>", invariants(report),
        "</body></html>",
    ]
    return "\n".join(parts)


def comparison(rows: list[tuple[str, str, str]]) -> str:
    head = "<tr><th></th><th>unsafe (incident config)</th><th>guarded (oncely defaults)</th></tr>"
    body = "".join(f"<tr><th{' class=sub' if label.startswith(' ') else ''}>"
                   f"{escape(label.strip())}</th><td>{escape(unsafe)}</td>"
                   f"<td>{escape(guarded)}</td></tr>" for label, unsafe, guarded in rows)
    return f"<table>{head}{body}</table>"


def charts(report: dict[str, Any]) -> str:
    blocks = []
    for name in report["phases"]["guarded"]["schedules"]:
        cells = []
        for phase in ("unsafe", "guarded"):
            figures = report["phases"][phase]["schedules"][name]
            title = (f"{name} ({figures['trigger']}), {phase}: {figures['runs']} runs, "
                     f"{figures['expected']} expected")
            cells.append(bar_chart(title, figures["per_hour"], "runs", ACTUAL[phase],
                                   expected_key="expected"))
        blocks.append(f"<div class='charts'>{''.join(cells)}</div>")
    return "".join(blocks)


def writes_chart(report: dict[str, Any]) -> str:
    cells = []
    for phase in ("unsafe", "guarded"):
        writes = report["phases"][phase]["org_writes"]
        title = f"{phase}: {writes['total']:,} organization rows written"
        cells.append(bar_chart(title, writes["per_hour"], "writes", ACTUAL[phase]))
    return f"<div class='charts'>{''.join(cells)}</div>"


def bar_chart(title: str, cells: list[dict[str, Any]], key: str, colour: str,
              expected_key: str | None = None, width: int = 480, height: int = 200) -> str:
    """Bars of ``cells[i][key]`` per hour, with a tick at ``cells[i][expected_key]``."""
    left, right, top, bottom = 44, 8, 40, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [int(cell[key]) for cell in cells]
    expected = [int(cell[expected_key]) for cell in cells] if expected_key else []
    peak = max([1, *values, *expected])
    step = plot_w / max(len(cells), 1)
    bar = max(step * 0.7, 1.0)

    def y(value: float) -> float:
        return top + plot_h - value / peak * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="100%" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<text x="{left}" y="14">{escape(title)}</text>',
             f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - right}" y2="{y(0):.1f}" '
             'stroke="#888"/>',
             f'<text x="{left - 4}" y="{y(peak) + 4:.1f}" text-anchor="end">{peak:,}</text>',
             f'<text x="{left - 4}" y="{y(0) + 4:.1f}" text-anchor="end">0</text>']
    for index, cell in enumerate(cells):
        x = left + index * step + (step - bar) / 2
        value = values[index]
        tip = f"{cell['hour'][11:16]}: {value:,} {key}"
        if expected:
            tip += f", {expected[index]} expected"
        parts.append(f"<g><title>{escape(tip)}</title>")
        parts.append(f'<rect x="{x:.1f}" y="{top}" width="{bar:.1f}" height="{plot_h}" '
                     'fill="transparent"/>')
        if value:
            parts.append(f'<rect x="{x:.1f}" y="{y(value):.1f}" width="{bar:.1f}" '
                         f'height="{y(0) - y(value):.1f}" fill="{colour}"/>')
        if expected and expected[index]:
            ey = y(expected[index])
            parts.append(f'<line x1="{x - 1:.1f}" y1="{ey:.1f}" x2="{x + bar + 1:.1f}" '
                         f'y2="{ey:.1f}" stroke="{EXPECTED}" stroke-width="3"/>')
        parts.append("</g>")
        if index % max(len(cells) // 6, 1) == 0:
            label = datetime.fromisoformat(cell["hour"]).strftime("%H:%M")
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - 10}" '
                         f'text-anchor="middle">{label}</text>')
    parts.append(f'<rect x="{left}" y="22" width="10" height="10" fill="{colour}"/>'
                 f'<text x="{left + 14}" y="31">{escape(key)}</text>')
    if expected:
        parts.append(f'<line x1="{left + 80}" y1="27" x2="{left + 94}" y2="27" '
                     f'stroke="{EXPECTED}" stroke-width="3"/><text x="{left + 98}" y="31">'
                     "expected</text>")
    parts.append("</svg>")
    return "".join(parts)


def configuration(report: dict[str, Any]) -> str:
    parts = []
    for phase in ("unsafe", "guarded"):
        data = report["phases"][phase]
        config = data["config"]
        notes = "".join(f"<li>{escape(note)}</li>" for note in config["notes"])
        events = "".join(f"<li><code>{escape(item['at'][11:16])}</code> {escape(item['what'])}"
                         "</li>" for item in data["timeline"]) or "<li>no fault injected</li>"
        parts.append(f"<h3>{escape(config['title'])}</h3><ul>{notes}</ul>"
                     f"<p class='note'>store {escape(data['store'])}; "
                     f"{data['real_seconds']:.0f} real seconds</p><ul>{events}</ul>")
    return "".join(parts)


def findings(report: dict[str, Any]) -> str:
    parts = []
    for phase in ("unsafe", "guarded"):
        data = report["phases"][phase]
        found = data["watchdog"]["raised_during_run"] + data["watchdog"]["final_check"]
        items = "".join(f"<li><b>{escape(item['kind'])}</b> {escape(item['summary'])}"
                        f"<br><span class='note'>{escape(item.get('advice') or '')}</span></li>"
                        for item in found) or "<li>nothing flagged</li>"
        doctor = data["doctor"]
        verdict = "healthy" if doctor.get("healthy") else "problems found"
        extra = "".join(f"<li>{escape(f['severity'])}: {escape(f['summary'])}</li>"
                        for f in doctor.get("findings", []))
        parts.append(f"<h3>{phase}</h3><p>watchdog:</p><ul>{items}</ul>"
                     f"<p>doctor: {verdict}</p><ul>{extra}</ul>")
    return "".join(parts)


def invariants(report: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td class='{'ok' if item['held'] else 'fail'}'>"
        f"{'held' if item['held'] else 'BROKEN'}</td><td>{escape(item['name'])}</td>"
        f"<td>{escape(item['evidence'])}</td></tr>" for item in report["invariants"])
    return f"<table>{rows}</table>"
