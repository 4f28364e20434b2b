"""Editing inverted photos: how much a brush draws and erases, with and without the concept prior.

Inverts held-out rendered scenes (render seed 14_014; the scene GAN's training pools use
seeds from 10,000,000 up) into the bundled scene GAN as GANPaint does for an upload
(``layer_for_edits``: layer5 for the paint layer layer6; ``PaintEngine.photo_prior`` with
``--prior-weight``, 0 for none), then measures with the scene segmenter, per scene:

* draw: tree over the grassiest 16 x 16 patch (>= 90% grass): share of the patch that is tree;
* erase: each concept over exactly its rendered pixels (>= 30 of them): share no longer found;
* control: as many random units of layer6, erased over the tree's pixels (3 draws);
* reconstruction: segmentation agreement with the rendered label maps, PSNR.

The paint engine is the tests' (tests/test_invert_scene.py): a 200-sample dissection of
layer6 (latent seed 0), units above IoU 0.03. ``--grid`` writes, for the first scenes with
a tree, the photo, the tree erased without the prior and with it (enlarged 3x).

    python benchmarks/invert_edits.py --scenes 32 --prior-weight 0.5 --compare --grid docs/paint_photo_erase.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

ERASED = ("tree", "brick", "building", "roof", "window", "dome", "water", "road", "mountain", "grass")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--prior-weight", type=float, default=0.5, help="0: invert without the concept prior")
    p.add_argument("--compare", action="store_true", help="also measure without the prior")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grid", default=None, help="PNG: photo | erased without the prior | erased with it")
    p.add_argument("--out", default=None, help="write the numbers as JSON")
    args = p.parse_args()
    import numpy as np
    import torch

    import gdx
    from gdx.inversion import layer_for_edits
    from gdx.paint import PaintEngine
    from gdx.scenes import LABELS, render_scenes

    torch.set_num_threads(args.threads)
    gen, seg = gdx.load_generator("scene"), gdx.load_segmenter("scene")
    dissection = gdx.dissect(gen, seg, "layer6", samples=200, seed=0, progress=False)
    engine = PaintEngine.build(gen, dissection, samples=200, seed=0, iou_min=0.03)
    layer = layer_for_edits(gen, engine.layer)
    batch = render_scenes(args.scenes, seed=14_014)
    weights = [args.prior_weight] + ([0.0] if args.compare and args.prior_weight > 0 else [])
    results: dict[str, Any] = {"command": "python benchmarks/invert_edits.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)), "runs": []}
    erased_views = {}
    for weight in weights:
        prior = engine.photo_prior(seg, weight=weight) if weight > 0 else None
        started = time.perf_counter()
        inv = gdx.invert(gen, batch.images, layer=layer, prior=prior)
        seconds = time.perf_counter() - started
        view = engine.with_generator(inv.as_generator(edit_layer=engine.layer))
        with torch.no_grad():
            agree = float((seg.segment(inv.reconstructions) == batch.labels).float().mean())
        run: dict[str, Any] = {"prior_weight": weight, "prior": prior.describe() if prior else "",
                               "prior_concepts": list(prior.units) if prior else [], "seconds": round(seconds, 1),
                               "agreement": round(agree, 4), "psnr": round(float(inv.psnr().mean()), 2)}
        run["drawn_tree"] = _draw(seg, batch, view, LABELS)
        run["erased"] = {c: _erase(seg, batch, view, c, LABELS.index(c)) for c in ERASED if c in engine.concepts}
        g = torch.Generator().manual_seed(5)
        control = []
        tree = engine.concepts["tree"]
        for _draw_no in range(3):
            units = tuple(torch.randperm(engine.dissection.units, generator=g)[: len(tree.units[:20])].tolist())
            engine.concepts["random"] = dataclasses.replace(tree, name="random", units=units)
            try:
                control.append(_erase(seg, batch, view, "random", LABELS.index("tree"))["mean"])
            finally:
                del engine.concepts["random"]
        run["random_units_on_tree"] = control
        results["runs"].append(run)
        erased_views[weight] = view
        print(json.dumps(run), flush=True)
    if args.grid:
        _grid(args.grid, batch, erased_views, LABELS.index("tree"), np)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


def _segment(seg: Any, renders: list[Any]) -> Any:
    import numpy as np
    import torch

    return seg.segment(torch.from_numpy(np.stack(renders)).permute(0, 3, 1, 2).float() / 127.5 - 1)


def _erase(seg: Any, batch: Any, view: Any, concept: str, label: int) -> dict[str, Any]:
    from gdx.paint import Stroke

    scenes = [i for i in range(len(batch.labels)) if int((batch.labels[i] == label).sum()) >= 30]
    if not scenes:
        return {"scenes": 0}
    found = _segment(seg, [view.render(i) for i in scenes]
                     + [view.render(i, [Stroke(concept, "remove", batch.labels[i] == label)]) for i in scenes]) == label
    shares = []
    for k, i in enumerate(scenes):
        mask = batch.labels[i] == label
        shares.append(1 - int(found[len(scenes) + k][mask].sum()) / max(int(found[k][mask].sum()), 1))
    return {"scenes": len(scenes), "mean": round(sum(shares) / len(shares), 4)}


def _draw(seg: Any, batch: Any, view: Any, labels: list[str]) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from gdx.paint import Stroke

    grass, tree = labels.index("grass"), labels.index("tree")
    masks, renders = [], []
    for i in range(len(batch.labels)):
        frac = F.avg_pool2d((batch.labels[i] == grass).float()[None, None], 16, stride=4)[0, 0]
        if frac.max() < 0.9:
            continue
        y, x = (int(v) * 4 for v in np.unravel_index(int(frac.argmax()), tuple(frac.shape)))
        m = torch.zeros(64, 64, dtype=torch.bool)
        m[y : y + 16, x : x + 16] = True
        masks.append(m)
        renders.append(view.render(i, [Stroke("tree", "draw", m)]))
    found = _segment(seg, renders) == tree
    shares = [float(found[k][m].float().mean()) for k, m in enumerate(masks)]
    return {"scenes": len(shares), "mean": round(sum(shares) / len(shares), 4)}


def _grid(path: str, batch: Any, views: dict[float, Any], tree: int, np: Any) -> None:
    from PIL import Image

    from gdx.paint import Stroke
    from gdx.plots import to_uint8

    order = sorted(views, reverse=True)  # with the prior first
    rows = []
    for i in range(len(batch.labels)):
        mask = batch.labels[i] == tree
        if int(mask.sum()) < 30:
            continue
        row = [to_uint8(batch.images[i])]
        row += [views[w].render(i, [Stroke("tree", "remove", mask)]) for w in reversed(order)]
        rows.append(np.concatenate(row, 1))
        if len(rows) == 6:
            break
    img = Image.fromarray(np.concatenate(rows, 0))
    img.resize((img.width * 3, img.height * 3), Image.NEAREST).save(path)


if __name__ == "__main__":
    main()
