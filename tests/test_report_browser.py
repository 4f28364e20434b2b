"""Real-browser test of the report: headless system Chromium via Playwright."""

from __future__ import annotations

import pytest

from gdx.report import write_report
from gdx_browser import chromium_page, make_run

pytestmark = pytest.mark.browser


def _column(page, index: int) -> list[str]:
    return page.eval_on_selector_all(
        "table.units tbody tr:not(.hidden)", f"rows => rows.map(r => r.cells[{index}].textContent.trim())"
    )


def test_report_in_chromium(tmp_path):
    run = make_run(tmp_path / "run", "toy", "toy", "features", samples=120, seed=1)
    index = write_report(run, tmp_path / "report", top_k=4)
    with chromium_page() as (page, errors):
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        headers = page.eval_on_selector_all("table.units th", "hs => hs.map(h => h.textContent.trim())")
        iou_col, unit_col = headers.index("IoU"), headers.index("unit")
        page.uncheck("input.only-interp")
        assert len(_column(page, unit_col)) == 10

        page.click("table.units th:text-is('unit')")  # numbers: largest first on the first click
        units = [int(x) for x in _column(page, unit_col)]
        assert units == sorted(units, reverse=True)
        page.click("table.units th:text-is('unit')")
        units = [int(x) for x in _column(page, unit_col)]
        assert units == sorted(units)
        page.click("table.units th:text-is('IoU')")
        ious = [float(x) for x in _column(page, iou_col)]
        assert ious == sorted(ious, reverse=True)
        page.click("table.units th:text-is('label')")
        labels = _column(page, headers.index("label"))
        assert labels == sorted(labels)

        page.fill("input.filter", "tree")
        assert set(_column(page, headers.index("label"))) == {"tree"}
        page.fill("input.filter", "")

        # lazy images: scroll each into view, then every one must have decoded
        count = page.locator("img.strip").count()
        assert count == 10
        for i in range(count):
            page.locator("img.strip").nth(i).scroll_into_view_if_needed()
        page.wait_for_function(
            "() => Array.from(document.images).every(img => img.complete)", timeout=15000
        )
        widths = page.eval_on_selector_all("img.strip", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) == 10 and all(w > 0 for w in widths), widths
        assert errors == []


def test_chart_labels_fit_and_tiles_fit_a_1400px_window(tmp_path):
    """No bar-chart label is clipped; 128 px tiles (and the default ones) do not overflow 1400 px."""
    run = make_run(tmp_path / "run", "toy", "toy", "features", samples=120, seed=1)
    for name, size in (("default", None), ("big", 128)):
        index = write_report(run, tmp_path / name, top_k=8, image_size=size)
        with chromium_page(viewport=(1400, 900)) as (page, errors):
            page.goto(index.as_uri())
            page.wait_for_load_state("load")
            page.uncheck("input.only-interp")
            outside = page.evaluate("""() => {
                const bad = [];
                document.querySelectorAll('svg').forEach(svg => {
                    const box = svg.getBoundingClientRect();
                    svg.querySelectorAll('text').forEach(t => {
                        const r = t.getBoundingClientRect();
                        if (r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5 ||
                            r.bottom > box.bottom + 0.5) { bad.push(t.textContent); }
                    });
                });
                return bad;
            }""")
            assert outside == [], f"clipped chart text: {outside}"
            scroll = page.evaluate("() => document.documentElement.scrollWidth")
            assert scroll <= 1400, f"{name} tiles: the page is {scroll} px wide in a 1400 px window"
            shown = page.eval_on_selector_all("img.strip", "imgs => imgs.map(i => i.getBoundingClientRect().width)")
            assert shown and min(shown) > 300  # shrunk to fit, not to nothing
            assert page.locator("table.concepts tbody tr").count() >= 1
            assert errors == []


def test_long_concept_and_category_names_are_not_clipped(tmp_path):
    from gdx.report.build import _static, page as report_page
    from gdx.report.svg import bar_chart

    chart = bar_chart({"sky": 9, "washer": 3, "chest of drawers": 2, "countertop": 1},
                      {"sky": "object", "washer": "object", "chest of drawers": "object", "countertop": "material"})
    (tmp_path / "report.css").write_text(_static("report.css"))
    (tmp_path / "report.js").write_text(_static("report.js"))
    (tmp_path / "index.html").write_text(report_page("chart", f'<div class="chart">{chart}</div>'))
    with chromium_page() as (page, errors):
        page.goto((tmp_path / "index.html").as_uri())
        clipped = page.evaluate("""() => {
            const svg = document.querySelector('svg'), box = svg.getBoundingClientRect();
            return Array.from(svg.querySelectorAll('text')).filter(t => {
                const r = t.getBoundingClientRect();
                return r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.bottom > box.bottom + 0.5;
            }).map(t => t.textContent);
        }""")
        assert clipped == []
        assert errors == []
