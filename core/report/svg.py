"""Inline SVG charts (no JavaScript, no CDN): the report opens offline and prints well.

Charts are plain strings of SVG markup built from escaped text, sized in CSS pixels.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

#: Fill colour per concept category (unknown categories cycle through the rest).
CATEGORY_COLOURS = {
    "object": "#4e79a7",
    "part": "#f28e2b",
    "material": "#59a14f",
    "stuff": "#9c755f",
    "scene": "#b07aa1",
    "texture": "#76b7b2",
    "color": "#e15759",
    "concept": "#4e79a7",
}
EXTRA_COLOURS = ["#edc948", "#ff9da7", "#bab0ac", "#af7aa1"]
SERIES_COLOURS = ["#d62728", "#2ca02c", "#1f77b4", "#9467bd", "#ff7f0e", "#17becf"]


#: Font size of chart text (CSS px, see report.css) and a generous average glyph width
#: for it: sizes are computed without a browser, so they err on the wide side.
LABEL_EM = 11.0
GLYPH_W = 0.62 * LABEL_EM


def text_width(text: str) -> float:
    """Width in px that ``text`` takes at most in chart labels (wide glyphs counted wider)."""
    wide = sum(1 for ch in text if ch in "mwMW@%")
    return GLYPH_W * (len(text) + 0.5 * wide)


def category_colour(category: str, seen: dict[str, str]) -> str:
    if category in CATEGORY_COLOURS:
        return CATEGORY_COLOURS[category]
    if category not in seen:
        seen[category] = EXTRA_COLOURS[len(seen) % len(EXTRA_COLOURS)]
    return seen[category]


def ci_bar(iou: float, low: float, high: float, null: float | None = None, *, width: int = 72,
           vmax: float = 1.0) -> str:
    """A small inline error bar: the 95% interval as a line, the IoU as a dot, the null IoU as a tick."""
    def px(v: float) -> float:
        return 2 + (width - 4) * min(max(v / vmax, 0.0), 1.0)

    tick = "" if null is None else (f'<line x1="{px(null):.1f}" x2="{px(null):.1f}" y1="1" y2="9" class="ci-null">'
                                    f"<title>null IoU {null:.3f}</title></line>")
    return (f'<svg class="ci" width="{width}" height="10" viewBox="0 0 {width} 10" role="img" '
            f'aria-label="IoU {iou:.3f}, 95% interval {low:.3f} to {high:.3f}">'
            f'<line x1="{px(low):.1f}" x2="{px(high):.1f}" y1="5" y2="5" class="ci-range"/>{tick}'
            f'<circle cx="{px(iou):.1f}" cy="5" r="2.5" class="ci-dot"/></svg>')


def bar_chart(per_concept: Mapping[str, int], categories: Mapping[str, str], *, title: str = "",
              significant: Mapping[str, int] | None = None) -> str:
    """Interpretable units per concept, bars grouped by category (largest group first).

    ``significant`` (per concept) draws the units that also beat the spatial-prior null
    as a darker bar inside each bar, with both counts in its tooltip.
    """
    groups: dict[str, list[tuple[str, int]]] = {}
    for concept, n in per_concept.items():
        if n > 0:
            groups.setdefault(categories.get(concept, "concept"), []).append((concept, n))
    if not groups:
        return '<p class="empty">No interpretable units in this layer.</p>'
    ordered = sorted(groups.items(), key=lambda kv: (-sum(n for _, n in kv[1]), kv[0]))
    bar_w, gap, group_gap = 18, 4, 16
    top_pad, left = 40, 36
    plot_h = 160
    # Labels are rotated 60 degrees below the axis: room for the longest one, down and right.
    longest = max(text_width(c) for _, items in ordered for c, _ in items)
    label_h = int(12 + longest * math.sin(math.radians(60)) + LABEL_EM * 0.5) + 4
    overhang = int(longest * math.cos(math.radians(60))) + 8
    vmax = max(n for _, items in ordered for _, n in items)
    n_bars = sum(len(items) for _, items in ordered)
    width = left + n_bars * (bar_w + gap) + (len(ordered) - 1) * group_gap + 10 + overhang
    height = top_pad + plot_h + label_h
    extra: dict[str, str] = {}
    parts = [
        f'<svg class="bar-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title or "units per concept")}">'
    ]
    base = top_pad + plot_h
    for tick in _ticks(vmax):
        y = base - plot_h * tick / vmax
        parts.append(f'<line x1="{left - 4}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{tick}</text>')
    x = left
    for category, items in ordered:
        colour = category_colour(category, extra)
        gx = x
        for concept, n in sorted(items, key=lambda kv: (-kv[1], kv[0])):
            h = plot_h * n / vmax
            name = html.escape(concept)
            sig = None if significant is None else int(significant.get(concept, 0))
            note = "" if sig is None else f", {sig} significant vs the spatial-prior null"
            parts.append(
                f'<rect x="{x}" y="{base - h:.1f}" width="{bar_w}" height="{h:.1f}" fill="{colour}">'
                f"<title>{name} ({html.escape(category)}): {n} units{note}</title></rect>"
            )
            if sig:
                hs = plot_h * min(sig, n) / vmax
                parts.append(f'<rect x="{x + 4}" y="{base - hs:.1f}" width="{bar_w - 8}" height="{hs:.1f}" '
                             f'class="sig-bar"><title>{name}: {sig} significant</title></rect>')
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{base - h - 3:.1f}" text-anchor="middle" class="val">{n}</text>')
            parts.append(
                f'<text transform="translate({x + bar_w / 2 + 4:.1f},{base + 6}) rotate(60)" class="lab">{name}</text>'
            )
            x += bar_w + gap
        half = text_width(category) * 1.2 / 2  # bold, 12 px
        cx = min(max((gx + x - gap) / 2, half + 2), width - half - 2)  # never past either edge
        parts.append(
            f'<text x="{cx:.1f}" y="14" text-anchor="middle" class="cat" '
            f'fill="{colour}">{html.escape(category)}</text>'
        )
        x += group_gap
    parts.append(f'<line x1="{left}" x2="{width}" y1="{base}" y2="{base}" class="axis"/>')
    parts.append("</svg>")
    return "".join(parts)


def _ticks(vmax: float) -> list[int]:
    step = max(1, int(round(vmax / 4)))
    return list(range(0, int(vmax) + 1, step))


def line_chart(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float] | None],
    *,
    title: str = "",
    x_label: str = "units",
    width: int = 360,
    height: int = 220,
) -> str:
    """Lines (one per named series) over ``xs``, e.g. removed / added / ACE vs. n units."""
    data = {k: [float(v) for v in vals] for k, vals in series.items() if vals}
    if not xs or not data:
        return ""
    left, right, top, bottom = 44, 12, 26, 36
    pw, ph = width - left - right, height - top - bottom
    values = [v for vals in data.values() for v in vals if v == v]
    lo, hi = min(0.0, *values), max(1e-9, *values)
    x0, x1 = float(min(xs)), float(max(xs))
    span_x = (x1 - x0) or 1.0

    def px(x: float) -> float:
        return left + pw * (x - x0) / span_x

    def py(y: float) -> float:
        return top + ph * (1 - (y - lo) / (hi - lo))

    parts = [
        f'<svg class="line-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="16" class="title">{html.escape(title)}</text>',
    ]
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = lo + (hi - lo) * frac
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{py(y) + 4:.1f}" text-anchor="end" class="tick">{y:.2f}</text>')
    if lo < 0 < hi:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(0):.1f}" y2="{py(0):.1f}" class="axis"/>')
    parts.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" class="tick">{html.escape(x_label)}</text>'
    )
    for x in xs:
        if len(xs) <= 20 or int(x) % 5 == 0:
            parts.append(f'<text x="{px(x):.1f}" y="{top + ph + 14}" text-anchor="middle" class="tick">{x:g}</text>')
    for i, (name, vals) in enumerate(data.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        pts = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in zip(xs, vals) if v == v)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, v in zip(xs, vals):
            if v == v:
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(v):.1f}" r="2.5" fill="{colour}">'
                             f"<title>{html.escape(name)} @ {x:g}: {v:.3f}</title></circle>")
        # Legend: a colour key (a short line with a dot, as the series is drawn) then the name.
        lx = width - right - 4 - max(text_width(n) for n in data) - 22
        ly = top + 12 + 13 * i
        parts.append(f'<g class="legend-key"><line x1="{lx:.1f}" x2="{lx + 16:.1f}" y1="{ly - 4}" y2="{ly - 4}" '
                     f'stroke="{colour}" stroke-width="2"/><circle cx="{lx + 8:.1f}" cy="{ly - 4}" r="2.5" '
                     f'fill="{colour}"/></g>')
        parts.append(f'<text x="{lx + 20:.1f}" y="{ly}" fill="{colour}" class="legend">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
