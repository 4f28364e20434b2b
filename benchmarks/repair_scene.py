"""Artifact repair on the bundled scene GAN (issue 16 acceptance), with every check it needs.

1. The run-to-run spread of the Fréchet distance at several sample sizes
   (:func:`gdx.score_spread`), to show the search and held-out sizes are above the noise.
2. :func:`gdx.find_artifact_units` on ``--layer``: search on ``--samples`` samples of
   ``--seed`` against rendered scenes of seed 10000, confirmation on ``--held-out``
   samples of ``--seed + 1`` against other rendered scenes (seed 20000), with a bootstrap
   interval, ``--control-draws`` random unit sets of the same size, the bundled realism
   critic (``scene-realism``) as the second score and the label distribution's TV.
3. A before/after grid of held-out samples (``--grid``) and the per-unit evidence.

    python benchmarks/repair_scene.py --layer layer6 --feature-stage 3 --samples 1000 \
        --held-out 2000 --real-scenes 3000 --out runs/repair-scene --grid docs/repair_grid.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import gdx
from gdx.plots import image_grid, write_png
from gdx.plugins.metrics.frechet import FrechetDistance, segmenter_features
from gdx.scenes import render_scenes


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--gen", default="scene")
    p.add_argument("--seg", default="scene")
    p.add_argument("--layer", default="layer6")
    p.add_argument("--feature-stage", type=int, default=3, help="encoder map of the Fréchet features (-1: deepest)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--held-out", type=int, default=2000)
    p.add_argument("--real-scenes", type=int, default=3000, help="rendered scenes per reference (search, held-out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--method", default="greedy", choices=["greedy", "prefix"])
    p.add_argument("--min-z", type=float, default=1.0)
    p.add_argument("--control-draws", type=int, default=5)
    p.add_argument("--spread-sizes", default="250,500,1000,2000", help="sizes for the spread ('' to skip)")
    p.add_argument("--spread-draws", type=int, default=4)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grid", default=None, help="write the before/after grid here too (e.g. docs/repair_grid.png)")
    p.add_argument("--out", default="runs/repair-scene")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen, seg = gdx.load_generator(args.gen), gdx.load_segmenter(args.seg)
    size = int(gen.generate(gen.sample_latents(1, seed=0)).shape[-1])
    real = render_scenes(args.real_scenes, seed=10_000, size=size).images
    held_real = render_scenes(args.real_scenes, seed=20_000, size=size).images
    fd = FrechetDistance(segmenter_features(seg, stage=args.feature_stage)).set_reference(real.split(250))
    summary: dict[str, object] = {"command": [sys.executable, *sys.argv] if argv is None else ["repair_scene.py", *argv],
                                  "threads": args.threads}
    if args.spread_sizes:
        t = time.time()
        sizes = [int(s) for s in args.spread_sizes.split(",")]
        spread = gdx.score_spread(gen, fd, sizes, draws=args.spread_draws, seed=100, batch_size=args.batch_size)
        spread.save(out / "spread.json")
        summary["spread_seconds"] = round(time.time() - t, 1)
        for n, m, sd in zip(spread.sizes, spread.means, spread.sds):
            print(f"spread: {n} samples: FD {m:.4f} +- {sd:.4f} ({100 * sd / m:.1f}%)", flush=True)
    t = time.time()
    rep = gdx.find_artifact_units(
        gen, args.layer, metric=fd, held_out_real=held_real.split(250), samples=args.samples, seed=args.seed,
        held_out=args.held_out, top=args.top, method=args.method, min_z=args.min_z,
        check=gdx.default_registry().build("metric", "scene-realism"), segmenter=seg,
        control_draws=args.control_draws, bootstrap=args.bootstrap, batch_size=args.batch_size,
        progress=lambda s: print(s, flush=True))
    summary["repair_seconds"] = round(time.time() - t, 1)
    rep.save(out / "repair.json")
    z = gen.sample_latents(8, seed=rep.held_out_seed)
    with torch.no_grad():
        before = gen.generate(z)
        after = gdx.load_generator(args.gen, ablate=rep.ablate).generate(z) if rep.units else before
    grid = image_grid([list(before), list(after)], size=128)
    write_png(out / "before_after.png", grid)
    if args.grid:
        write_png(args.grid, grid)
    control = torch.tensor(rep.control or [0.0], dtype=torch.float64)
    summary.update(
        units=rep.units, ablate=rep.ablate, improvement=rep.improvement, interval=rep.interval,
        confirmed=rep.confirmed, held_out_before=rep.held_out_before, held_out_after=rep.held_out_after,
        search_before=rep.before, search_after=rep.after, noise=rep.noise,
        control_mean=float(control.mean()), control_sd=float(control.std()) if control.numel() > 1 else 0.0,
        check=rep.check, label_tv=rep.label_tv)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
