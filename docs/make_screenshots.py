"""Regenerate docs/report.png and docs/paint.png with headless system Chromium (Playwright).

Uses the bundled scene GAN/segmenter when their weights load, else the synthetic toy pair.

    python docs/make_screenshots.py [--run runs/scene-scene]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from gdx_browser import best_layer_for, chromium_page, make_run, scene_available, serve  # noqa: E402


def gdx_segmenter(run: Path):
    import json

    import gdx

    return gdx.load_segmenter(json.loads((run / "run.json").read_text())["segmenter"])


def empty_spot(engine, segmenter, concept: str, grid: int = 12):
    """(sample, (y0, x0, y1, x1)): a grid sample and a window without ``concept``, on the most ground."""
    import torch

    from gdx.sampling import segment_images

    labels = list(segmenter.labels)
    c = labels.index(concept)
    ground = labels.index("grass") if "grass" in labels else -1
    h, w = engine.image_size
    size = h * 3 // 8
    best = None
    for sample in range(grid):
        x = torch.from_numpy(engine.render(sample).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        seg = segment_images(segmenter, x)[0]
        seg = seg if seg.dim() == 2 else seg[0]
        for y0 in range(h // 2, h - size + 1, 2):
            for x0 in range(0, w - size + 1, 2):
                win = seg[y0 : y0 + size, x0 : x0 + size]
                score = float((win == ground).float().mean()) - 5 * float((win == c).float().mean())
                if best is None or score > best[0]:
                    best = (score, sample, (y0, x0, y0 + size, x0 + size))
    return best[1], best[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="a finished 'gdx run' folder (default: dissect now)")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--concept", default="tree")
    args = ap.parse_args()
    import torch

    from gdx.paint import engine_from_run
    from gdx.paint.server import create_app
    from gdx.report import write_report

    torch.set_grad_enabled(False)
    tmp = Path(tempfile.mkdtemp())
    if args.run:
        run = Path(args.run)
    elif scene_available():
        run = make_run(tmp / "run", "scene", "scene", ["layer4", "layer5", "layer6"], samples=args.samples)
    else:
        run = make_run(tmp / "run", "toy", "toy", "features", samples=args.samples)
    import json

    layers = json.loads((run / "run.json").read_text())["layers"]
    index = write_report(run, tmp / "report", top_k=8)
    with chromium_page(viewport=(1280, 1000)) as (page, errors):
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        page.wait_for_function("() => Array.from(document.images).filter(i => i.offsetParent && i.getBoundingClientRect().top < "
                               "innerHeight).every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(HERE / "report.png"))
        if errors:
            raise SystemExit(f"console errors on the report: {errors}")
    iou_min = 0.03 if args.concept == "tree" else None  # as the browser test: see tests/test_paint_browser.py
    engine = engine_from_run(run, best_layer_for(run, layers, args.concept, iou_min=iou_min), iou_min=iou_min)
    spot = empty_spot(engine, gdx_segmenter(run), args.concept)
    with serve(create_app(engine)) as url, chromium_page(viewport=(1100, 640)) as (page, errors):
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        sample, (y0, x0, y1, x1) = spot
        page.click(f"#samples img[data-sample='{sample}']")
        page.click(f"#concepts button[data-concept='{args.concept}']")
        page.eval_on_selector("#brush-size", "(e) => { e.value = '48'; e.dispatchEvent(new Event('input')); }")
        box = page.locator("#brush").bounding_box()
        scale = 512 / engine.image_size[1]
        page.mouse.move(box["x"] + x0 * scale + 24, box["y"] + y0 * scale + 24)
        page.mouse.down()
        y = y0 * scale + 24
        while y <= y1 * scale - 24:
            page.mouse.move(box["x"] + x1 * scale - 24, box["y"] + y, steps=6)
            y += 24
            page.mouse.move(box["x"] + x0 * scale + 24, box["y"] + y, steps=6)
            y += 24
        page.mouse.up()
        page.wait_for_function("() => document.getElementById('image').src.startsWith('data:image/png')")
        page.wait_for_timeout(300)
        page.screenshot(path=str(HERE / "paint.png"))
        if errors:
            raise SystemExit(f"console errors on the paint page: {errors}")
    print(HERE / "report.png", HERE / "paint.png")


if __name__ == "__main__":
    main()
