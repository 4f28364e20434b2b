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
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
        page.screenshot(path=str(HERE / "report.png"))
        if errors:
            raise SystemExit(f"console errors on the report: {errors}")
    engine = engine_from_run(run, best_layer_for(run, layers, args.concept))
    with serve(create_app(engine)) as url, chromium_page(viewport=(1100, 640)) as (page, errors):
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        page.click(f"#concepts button[data-concept='{args.concept}']")
        box = page.locator("#brush").bounding_box()
        page.mouse.move(box["x"] + 140, box["y"] + 330)
        page.mouse.down()
        page.mouse.move(box["x"] + 300, box["y"] + 350, steps=12)
        page.mouse.move(box["x"] + 160, box["y"] + 400, steps=12)
        page.mouse.up()
        page.wait_for_function("() => document.getElementById('image').src.startsWith('data:image/png')")
        page.wait_for_timeout(300)
        page.screenshot(path=str(HERE / "paint.png"))
        if errors:
            raise SystemExit(f"console errors on the paint page: {errors}")
    print(HERE / "report.png", HERE / "paint.png")


if __name__ == "__main__":
    main()
