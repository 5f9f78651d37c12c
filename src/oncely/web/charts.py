"""Inline SVG charts, drawn on the server: no script, no build step, readable without colour.

:func:`timeline_svg` draws a schedule's expected-versus-actual executions per bucket: stacked bars
for what ran (first runs of slots, retries, runs not tied to a slot) and a dark tick for what the
schedule's definition expects. Each bucket carries a ``<title>`` with its numbers (a tooltip in
browsers, text for screen readers).
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from markupsafe import Markup

from oncely.observe.fmt import span

SERIES = (
    ("slot", "slot runs", "#2e7d32"),
    ("retry", "retries", "#f9a825"),
    ("non_slot", "not tied to a slot", "#c62828"),
)
EXPECTED_COLOUR = "#0d47a1"


def _label(start: str, bucket_seconds: float) -> str:
    moment = datetime.fromisoformat(start)
    return moment.strftime("%H:%M" if bucket_seconds < 86400 else "%m-%d")


def timeline_svg(timeline: dict[str, Any], width: int = 760, height: int = 220) -> Markup:
    buckets: list[dict[str, Any]] = timeline["buckets"]
    size = float(timeline["bucket_seconds"])
    left, right, top, bottom = 40, 10, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([1] + [b["actual"] for b in buckets] + [b["expected"] for b in buckets])
    step = plot_w / max(len(buckets), 1)
    bar = max(step * 0.7, 1.0)

    def y(value: float) -> float:
        return float(top + plot_h - value / peak * plot_h)

    title = (f"Executions of {timeline['task']} per {span(size)}: actual (bars) against "
             f"expected (ticks)")
    parts = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}"'
        f' width="100%" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - right}" y2="{y(0):.1f}" '
        'stroke="#888" stroke-width="1"/>',
        f'<text x="{left - 6}" y="{y(peak) + 4:.1f}" text-anchor="end" class="axis">{peak}</text>',
        f'<text x="{left - 6}" y="{y(0) + 4:.1f}" text-anchor="end" class="axis">0</text>',
    ]
    for index, bucket in enumerate(buckets):
        x = left + index * step + (step - bar) / 2
        base = 0
        tip = (f"{bucket['start']}: {bucket['actual']} executions ({bucket['slot']} slot runs, "
               f"{bucket['retry']} retries, {bucket['non_slot']} not tied to a slot), "
               f"{bucket['expected']} expected")
        parts.append(f'<g class="bucket" data-actual="{bucket["actual"]}" '
                     f'data-expected="{bucket["expected"]}"><title>{escape(tip)}</title>')
        parts.append(f'<rect x="{x:.1f}" y="{top}" width="{bar:.1f}" height="{plot_h}" '
                     'fill="transparent"/>')
        for key, _name, colour in SERIES:
            value = bucket[key]
            if value:
                parts.append(f'<rect x="{x:.1f}" y="{y(base + value):.1f}" width="{bar:.1f}" '
                             f'height="{y(base) - y(base + value):.1f}" fill="{colour}"/>')
                base += value
        if bucket["expected"]:
            ey = y(bucket["expected"])
            parts.append(f'<line x1="{x - 2:.1f}" y1="{ey:.1f}" x2="{x + bar + 2:.1f}" '
                         f'y2="{ey:.1f}" stroke="{EXPECTED_COLOUR}" stroke-width="3"/>')
        parts.append("</g>")
        if index % max(len(buckets) // 6, 1) == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" '
                         f'text-anchor="middle" class="axis">'
                         f"{escape(_label(bucket['start'], size))}</text>")
    parts.append(_legend(left, 16))
    parts.append("</svg>")
    return Markup("".join(parts))


def _legend(x: int, y: int) -> str:
    items = []
    for _key, name, colour in SERIES:
        items.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="{y}" class="legend">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    items.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 12}" y2="{y - 4}" '
                 f'stroke="{EXPECTED_COLOUR}" stroke-width="3"/>'
                 f'<text x="{x + 16}" y="{y}" class="legend">expected</text>')
    return "".join(items)
