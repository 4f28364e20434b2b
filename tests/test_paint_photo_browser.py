"""Real-browser test of GANPaint's "Open image": upload a rendered scene PNG, paint a tree on it.

The scene is rendered from a seed the GAN never saw (14_021; training pools start at
10,000,000), so to the GAN it is a photo. Needs the bundled scene world and system Chromium.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gdx
from gdx_browser import chromium_page, make_run, scene_available, serve
from test_paint_browser import DISPLAY, data_url_image, paint_rect, segment, set_brush

pytestmark = pytest.mark.browser
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")



def test_open_a_photo_and_paint_a_tree_in_chromium(tmp_path):
    if not scene_available():
        pytest.skip("the bundled scene world is not available")
    from gdx.paint import engine_from_run
    from gdx.paint.server import create_app
    from gdx.plots import to_uint8, write_png
    from gdx.scenes import LABELS, render_scenes

    engine = engine_from_run(make_run(tmp_path / "run", "scene", "scene", "layer6", samples=200), iou_min=0.03)
    seg = gdx.load_segmenter("scene")
    tree, grass = LABELS.index("tree"), LABELS.index("grass")
    scenes = render_scenes(8, seed=14_021)
    frac = F.avg_pool2d((scenes.labels == grass).float()[:, None], 16, stride=2)[:, 0]  # 8 x 25 x 25
    best = int(frac.flatten(1).max(1).values.argmax())
    assert float(frac[best].max()) >= 0.9, "no scene with a 16 x 16 patch of grass"
    y, x = (int(v) * 2 for v in np.unravel_index(int(frac[best].argmax()), tuple(frac[best].shape)))
    photo = to_uint8(scenes.images[best])
    path = write_png(tmp_path / "upload.png", photo)
    scale = DISPLAY / 64

    # as `gdx paint` serves it: uploads inverted with the concept prior of the run's segmenter
    with serve(create_app(engine, segmenter=seg)) as url, chromium_page() as (page, errors):
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        page.set_input_files("#image-file", str(path))
        page.wait_for_function("() => !!document.getElementById('image').dataset.photo", timeout=120000)
        page.wait_for_function("() => document.getElementById('image').complete")
        shown = data_url_image(page.get_attribute("#image", "src"))
        assert np.array_equal(shown, photo), "the canvas should be the uploaded photo itself"
        page.click("#concepts button[data-concept='tree']")
        page.check("input[name=mode][value=draw]")
        brush = 32
        set_brush(page, brush)
        after = paint_rect(page, y * scale, x * scale, (y + 16) * scale, (x + 16) * scale, brush)
        window = (slice(y, y + 16), slice(x, x + 16))
        before_trees = int((segment(seg, photo)[window] == tree).sum())
        after_trees = int((segment(seg, after)[window] == tree).sum())
        print(f"tree pixels in the 16 x 16 stroke: photo {before_trees}, painted {after_trees}")
        # the 32-scene bar (>= 30% of a stroke on average) is tests/test_invert_scene.py; one upload in a
        # browser must show trees appear: 5% of the stroke, as tests/test_paint_browser.py asks of samples
        assert after_trees >= before_trees + 0.05 * 256, (before_trees, after_trees)
        far = ~(F.max_pool2d(torch.zeros(64, 64).index_put_((torch.arange(y, y + 16)[:, None],
                                                             torch.arange(x, x + 16)[None]), torch.tensor(1.0))
                             [None, None], 17, stride=1, padding=8)[0, 0] > 0)
        assert np.array_equal(after[far.numpy()], photo[far.numpy()]), "far from the stroke the photo is untouched"
        assert page.get_attribute("#download", "href").startswith("data:image/png")
        page.click("#undo")
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('photo')")
        assert np.array_equal(data_url_image(page.get_attribute("#image", "src")), photo)
        assert errors == []
