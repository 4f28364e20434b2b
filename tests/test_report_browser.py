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
