"""Write a run's dissection report: a static HTML folder that opens offline.

Layout of the output folder::

    index.html       one section per layer: summary, bar chart, units per concept, causal curves, unit table
    report.css       style (copied from the package)
    report.js        table sorting / filtering (plain JS, no build step, no CDN)
    <layer>/unit_NNNN.jpg   each unit's top-k samples, region highlighted (lazy-loaded)

The page works without JavaScript (the table is plain HTML); the script adds
sorting and filtering. Images carry ``loading="lazy"`` and explicit sizes, so a
512-unit layer opens at once and fetches strips as they scroll into view.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gdx.errors import ResultFormatError, RunFolderError, SettingsError
from gdx.causal.saved import CausalResults, find_causal_results
from gdx.report.samples import StripSpec, render_unit_strips, tile_size
from gdx.report.svg import bar_chart, ci_bar, line_chart
from gdx.results import Dissection
from gdx.runs import RunFolder, RunManifest

STATIC_FILES = ("report.css", "report.js")


@dataclass
class RunInfo:
    """A finished run folder: its manifest and its per-layer dissections."""

    folder: Path
    manifest: RunManifest
    dissections: list[Dissection]


def load_run(run_dir: str | Path) -> RunInfo:
    """Read ``run.json`` and every layer's dissection from a ``gdx run --out`` folder."""
    folder = RunFolder(run_dir)
    return RunInfo(folder.path, folder.manifest(), folder.dissections())


def safe_name(layer: str) -> str:
    """A folder name for ``layer`` (module names may hold dots; nothing else odd survives)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", layer).strip(".") or "layer"


def _static(name: str) -> str:
    return resources.files("gdx.report").joinpath("static", name).read_text(encoding="utf-8")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None or x != x else f"{x:.{digits}f}"


def _settings_line(d: Dissection) -> str:
    s = d.settings
    return (f"{html.escape(s.generator)} / {html.escape(s.segmenter)}, layer <b>{html.escape(d.layer)}</b>, "
            f"{d.units} units, {s.samples} samples, seed {s.seed}, threshold {html.escape(str(s.threshold))}")


def unit_table(d: Dissection, strips: dict[int, str], folder: str, strip_size: tuple[int, int] | None) -> str:
    """The sortable, filterable unit table (plain HTML; report.js adds the behaviour)."""
    iou_min = d.settings.iou_min
    has_iqr = any(u.iqr is not None for u in d.unit_labels)
    head = [("unit", "num"), ("label", "text"), ("category", "text"), ("IoU", "num"), ("next best", "text")]
    if has_iqr:
        head.append(("IQR", "num"))
    head.append(("threshold", "num"))
    trusted = d.pvalue is not None
    significant = set(d.significant()) if trusted else set()
    if trusted:
        head += [("95% CI", "text"), ("null IoU", "num"), ("significant", "text")]
    cols = "".join(f'<th data-type="{t}" tabindex="0">{h}</th>' for h, t in head) + "<th>top samples</th>"
    rows = []
    interpretable = {u.unit for u in d.interpretable()}
    for u in sorted(d.unit_labels, key=lambda u: (-u.iou, u.unit)):
        cat = u.category or d.categories.get(u.label, "")
        cells = [str(u.unit), html.escape(u.label), html.escape(cat), _fmt(u.iou)]
        runners = f'<span class="also">{html.escape(runner_up_text(d, u.unit, u.label))}</span>'
        cells.append(runners)
        if has_iqr:
            cells.append(_fmt(u.iqr))
        cells.append(_fmt(float(d.thresholds[u.unit])))
        if trusted:
            lo, hi = u.iou_ci if u.iou_ci is not None else (u.iou, u.iou)
            cells += [f'{ci_bar(u.iou, lo, hi, u.null_iou)} <span class="ci-text">{lo:.3f}–{hi:.3f}</span>',
                      _fmt(u.null_iou), "yes" if u.unit in significant else "no"]
        tds = "".join(f"<td>{c}</td>" for c in cells)
        if u.unit in strips and strip_size:
            w, h = strip_size
            src = html.escape(f"{folder}/{strips[u.unit]}")
            img = (f'<img class="strip" loading="lazy" decoding="async" src="{src}" width="{w}" height="{h}" '
                   f'alt="unit {u.unit}: top samples">')
        else:
            img = ""
        cls = "interp" if u.unit in interpretable else "weak"
        rows.append(f'<tr class="{cls}" data-unit="{u.unit}" id="{unit_anchor(folder, u.unit)}">{tds}'
                    f'<td class="strip-cell">{img}</td></tr>')
    controls = (
        '<div class="controls">'
        '<input type="search" class="filter" placeholder="filter by label or category" aria-label="filter units">'
        f'<label><input type="checkbox" class="only-interp" checked> only interpretable (IoU &gt; {iou_min:g})</label>'
        '<span class="count"></span></div>'
    )
    return (f'<div class="unit-view">{controls}<table class="units"><thead><tr>{cols}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def unit_anchor(folder: str, unit: int) -> str:
    """The id of a unit's table row (links from the per-concept view point at it)."""
    return f"{folder}-unit-{unit}"


def runner_up_text(d: Dissection, unit: int, best: str, n: int = 2) -> str:
    """The unit's next ``n`` concepts after ``best`` by IoU (only those with IoU > 0), e.g. "sky 0.081, grass 0.052"."""
    col = d.iou[unit]
    order = sorted(range(len(d.labels)), key=lambda j: (-float(col[j]), j))
    picked = [(d.labels[j], float(col[j])) for j in order if d.labels[j] != best and float(col[j]) > 0][:n]
    return ", ".join(f"{name} {v:.3f}" for name, v in picked)


def concept_view(d: Dissection, folder: str, limit: int = 12) -> str:
    """Units of each concept: the interpretable units labelled with it (linked to their rows, best first),
    and the unit with the highest IoU for it whatever its label. Concepts with no unit above IoU 0 are left out."""
    interp: dict[str, list[tuple[int, float]]] = {}
    for u in d.interpretable():
        interp.setdefault(u.label, []).append((u.unit, u.iou))
    rows = []
    for j, concept in enumerate(d.labels):
        col = d.iou[:, j]
        best = int(col.argmax()) if d.units else 0
        if d.units == 0 or float(col[best]) <= 0:
            continue
        units = interp.get(concept, [])
        links = ", ".join(f'<a href="#{unit_anchor(folder, u)}">{u}</a> ({v:.3f})' for u, v in units[:limit])
        if len(units) > limit:
            links += f" and {len(units) - limit} more"
        cells = [html.escape(concept), html.escape(d.categories.get(concept, "")), str(len(units)), links,
                 f'<a href="#{unit_anchor(folder, best)}">{best}</a> ({float(col[best]):.3f})']
        rows.append((-len(units), -float(col[best]), "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"))
    if not rows:
        return ""
    body = "".join(r for *_, r in sorted(rows, key=lambda r: (r[0], r[1])))
    head = ('<th data-type="text" tabindex="0">concept</th><th data-type="text" tabindex="0">category</th>'
            '<th data-type="num" tabindex="0">units</th><th>interpretable units (IoU)</th>'
            '<th data-type="num" tabindex="0">highest-IoU unit</th>')
    opened = " open" if len(rows) <= 30 else ""  # a long vocabulary starts folded
    return (f'<details class="concept-view"{opened}><summary>Units per concept ({len(rows)} concepts)</summary>'
            f'<table class="concepts"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>')


def causal_section(results: CausalResults | None) -> str:
    """ACE values and cumulative-ablation curves per concept (when intervention results exist)."""
    if not results:
        return ""
    parts = ['<h3>Causal effects</h3><div class="causal">']
    for concept in results.concepts():
        figs = []
        for c in results.curves:
            if c.get("concept") != concept:
                continue
            xs = c.get("n") or list(range(1, len(c.get("removed") or []) + 1))
            figs.append(line_chart(
                xs, {"removed": c.get("removed"), "added": c.get("added"), "ACE": c.get("ace")},
                title=f"{concept}: {c.get('_file', '')} ({c.get('samples', '?')} samples)",
                x_label="top-n units ablated / inserted",
            ))
        rows = []
        for e in results.effects:
            if e.get("concept") != concept:
                continue
            rows.append(
                f"<tr><td>{len(e.get('units', []))}</td><td>{_fmt(e.get('removed'))}</td>"
                f"<td>{_fmt(e.get('added'))}</td><td>{_fmt(e.get('ace'))}</td>"
                f"<td>{html.escape(', '.join(str(u) for u in e.get('units', [])[:20]))}</td></tr>"
            )
        for r in results.rankings:
            if r.get("concept") == concept:
                scores = r.get("scores") or []
                best = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:10]
                figs.append(f'<p class="ranking">ranking ({html.escape(str(r.get("method")))}): units '
                            f'{html.escape(", ".join(str(i) for i in best))}</p>')
        table = ""
        if rows:
            table = ('<table class="effects"><thead><tr><th>units</th><th>removed</th><th>added</th><th>ACE</th>'
                     f'<th>which</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
        parts.append(f'<div class="concept-effects"><h4>{html.escape(concept)}</h4>{"".join(figs)}{table}</div>')
    for t in results.tables:
        table_rows = "".join(
            f"<tr><td>{html.escape(str(r.get('concept')))}</td><td>{_fmt(r.get('removed'), 2)}</td>"
            f"<td>{_fmt(r.get('random_removed'), 2)}</td><td>{side_effect_text(r)}</td></tr>"
            for r in t.get("rows", [])
        )
        parts.append(
            f'<div class="concept-effects"><h4>removal by top-{t.get("top")} ({html.escape(str(t.get("method")))})</h4>'
            '<table class="effects"><thead><tr><th>concept</th><th>removed</th><th>random</th><th>side effect (concept)</th>'
            f"</tr></thead><tbody>{table_rows}</tbody></table></div>"
        )
    parts.append("</div>")
    return "".join(parts)


def side_effect_text(row: dict[str, Any]) -> str:
    """A removal row's side effect with the concept it is of, e.g. "-0.12 (sky)"."""
    value = row.get("side_effect")
    if value is None:
        return ""
    side = row.get("side_effects") or {}
    named = [k for k, v in side.items() if k != row.get("concept") and v is not None and abs(float(v) - float(value)) < 1e-9]
    name = f" ({html.escape(str(named[0]))})" if named and float(value) != 0 else ""
    return f"{_fmt(value, 2)}{name}"


def page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="report.css"></head><body>'
        f"{body}<script src=\"report.js\"></script></body></html>\n"
    )


def _write_static(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in STATIC_FILES:
        (out / name).write_text(_static(name), encoding="utf-8")


def write_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    top_k: int = 8,
    image_size: int | None = None,
    images: bool = True,
    generator: Any = None,
    progress: Callable[[str], None] | None = None,
    overlay: bool = False,
    segmenter: Any = None,
) -> Path:
    """Write the HTML report of the run in ``run_dir`` to ``out_dir`` (default ``run_dir/report``).

    ``top_k`` samples per unit are regenerated (from ``run.json``: the generator is
    rebuilt with its options, or pass ``generator``) and shown with the unit's
    thresholded region highlighted; ``images=False`` skips them. ``overlay=True`` also
    tints, in each tile, the pixels the run's segmenter (rebuilt from ``run.json``, or
    pass ``segmenter``) gives the unit's concept. Tiles are ``image_size`` px, else
    sized by :func:`gdx.report.samples.tile_size`. Intervention results
    (JSON files of :mod:`gdx.causal`) anywhere under ``run_dir`` add per-concept ACE
    values and cumulative curves. Returns the path of ``index.html``.

    >>> gdx.report.write_report("runs/scene-scene")      # then open runs/scene-scene/report/index.html
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.folder / "report"
    if top_k < 1:
        raise SettingsError(f"top_k must be >= 1, got {top_k}")
    _write_static(out)
    causal = find_causal_results(run.folder)
    gen = generator
    if images and gen is None:
        gen = run.manifest.generator.build("generator")
    seg = segmenter
    if images and overlay and seg is None:
        seg = run.manifest.segmenter.build("segmenter")
        seg.to(gen.device)
    sections, nav = [], []
    for d in run.dissections:
        folder = safe_name(d.layer)
        strips: dict[int, str] = {}
        strip_size = None
        if images:
            if progress:
                progress(f"rendering top-{top_k} samples of {d.units} units of {d.layer}")
            probe = gen.generate(gen.sample_latents(1, seed=d.settings.seed).to(gen.device))
            k = min(top_k, int(d.top_indices.shape[1]))
            tile = tile_size(tuple(probe.shape[-2:]), image_size, k)
            target = out / folder
            if target.exists():
                shutil.rmtree(target)
            strips = render_unit_strips(gen, d, StripSpec(target, k, tile), segmenter=seg if overlay else None)
            strip_size = (k * (tile + 2) - 2, tile)
        s = d.summary()
        key = ('<p class="overlay-note">Tiles: the unit\'s region is outlined in yellow (outside it is dimmed); '
               "where the segmenter finds the unit's label is tinted blue.</p>") if strips and overlay else ""
        anchor = f"layer-{folder}"
        nav.append(f'<a href="#{anchor}">{html.escape(d.layer)} ({s.interpretable}/{s.units})</a>')
        cats = ", ".join(f"{html.escape(k)} {v}" for k, v in s.per_category.items()) or "none"
        sections.append(
            f'<section class="layer" id="{anchor}"><h2>{html.escape(d.layer)}</h2>'
            f'<p class="settings">{_settings_line(d)}</p>'
            f"<p><b>{s.interpretable}</b> of {s.units} units are interpretable (IoU &gt; {d.settings.iou_min:g}): {cats}"
            + ("" if s.significant is None else
               f"; <b>{s.significant}</b> significant against the spatial-prior null (FDR {s.fdr:g}, inner dark bars)")
            + (f" &mdash; <b>control: {html.escape(d.settings.control)}</b>" if d.settings.control else "") + "</p>"
            f'<div class="chart">{bar_chart(s.per_concept, d.categories, title=f"interpretable units of {d.layer}", significant=s.significant_per_concept if s.significant is not None else None)}</div>'
            f"{concept_view(d, folder)}"
            f"{causal_section(causal.get(d.layer))}"
            f"<h3>Units</h3>{key}{unit_table(d, strips, folder, strip_size)}</section>"
        )
    m = run.manifest
    title = f"gdx dissection: {m.generator.name} / {m.segmenter.name}"
    note = ('<p class="note">SYNTHETIC models (the built-in toy pair): the results show how gdx works, '
            "not what a real GAN learned.</p>") if m.synthetic else ""
    body = (f"<header><h1>{html.escape(title)}</h1>{note}<nav>{' · '.join(nav)}</nav></header>"
            f"<main>{''.join(sections)}</main>")
    index = out / "index.html"
    index.write_text(page(title, body), encoding="utf-8")
    return index


@dataclass
class Side:
    """One side of a comparison: a label and a dissection."""

    name: str
    dissection: Dissection


def resolve_side(path: str | Path) -> Side:
    """A layer folder (holds dissection.json), or a run folder with exactly one layer."""
    p = Path(path)
    if (p / "dissection.json").is_file():
        d = Dissection.load(p)
        return Side(f"{p.parent.name}/{d.layer}", d)
    if RunFolder(p).state() == "finished":
        run = load_run(p)
        if len(run.dissections) != 1:
            names = ", ".join(str(p / safe_name(d.layer)) for d in run.dissections)
            raise RunFolderError(f"{p} holds {len(run.dissections)} layers; pass one layer folder: {names}")
        return Side(f"{p.name}/{run.dissections[0].layer}", run.dissections[0])
    raise ResultFormatError(f"{p} is neither a gdx run folder (run.json) nor a layer folder (dissection.json).")


def write_compare(a: str | Path, b: str | Path, out_dir: str | Path) -> Path:
    """Side-by-side comparison of two runs or layers: bar charts and a per-concept table.

    >>> gdx.report.write_compare("runs/x/layer4", "runs/x/layer7", "runs/compare")
    """
    left, right = resolve_side(a), resolve_side(b)
    out = Path(out_dir)
    _write_static(out)
    cols = []
    for side in (left, right):
        d, s = side.dissection, side.dissection.summary()
        cols.append(
            f'<div class="side"><h2>{html.escape(side.name)}</h2><p class="settings">{_settings_line(d)}</p>'
            f"<p><b>{s.interpretable}</b> of {s.units} units interpretable"
            + ("" if s.significant is None else f", <b>{s.significant}</b> significant vs the spatial-prior null")
            + (f" (control: {html.escape(d.settings.control)})" if d.settings.control else "") + "</p>"
            f'<div class="chart">{bar_chart(s.per_concept, d.categories, title=side.name, significant=s.significant_per_concept if s.significant is not None else None)}</div></div>'
        )
    concepts = sorted(set(left.dissection.labels) | set(right.dissection.labels))
    rows = []
    for c in concepts:
        cells = [html.escape(c),
                 html.escape(left.dissection.categories.get(c) or right.dissection.categories.get(c) or "")]
        signal = 0.0
        for side in (left, right):
            d = side.dissection
            if c in d.labels:
                col = d.iou[:, d.labels.index(c)]
                best = int(col.argmax())
                summ = d.summary()
                n = summ.per_concept.get(c, 0)
                signal = max(signal, n, float(col[best]))
                sig = "" if summ.significant is None else f" ({summ.significant_per_concept.get(c, 0)} significant)"
                cells += [f"{n}{sig}", f"{float(col[best]):.3f} (unit {best})"]
            else:
                cells += ["", ""]
        if signal > 0:
            rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    ln, rn = html.escape(left.name), html.escape(right.name)
    table = (
        '<div class="controls"><input type="search" class="filter" placeholder="filter concepts" '
        'aria-label="filter concepts"><span class="count"></span></div>'
        '<table class="units compare"><thead><tr><th data-type="text" tabindex="0">concept</th>'
        '<th data-type="text" tabindex="0">category</th>'
        f'<th data-type="num" tabindex="0">units {ln}</th><th data-type="num" tabindex="0">best IoU {ln}</th>'
        f'<th data-type="num" tabindex="0">units {rn}</th><th data-type="num" tabindex="0">best IoU {rn}</th>'
        f'</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    title = f"gdx compare: {left.name} vs {right.name}"
    body = (f"<header><h1>{html.escape(title)}</h1></header><main><div class=\"sides\">{''.join(cols)}</div>"
            f"<section class=\"layer\"><h3>Concepts</h3>{table}</section></main>")
    index = out / "index.html"
    index.write_text(page(title, body), encoding="utf-8")
    return index
