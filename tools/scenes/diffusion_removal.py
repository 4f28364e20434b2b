"""Causal unit sets of the bundled scene-diffusion model's ``mid`` block, one per concept.

Never run in CI (about 20 minutes per concept on two cores). For each concept of
``--concepts``, on the shipped weights and latent seed 0 only (held-out checks use seed 1):

1. dissect ``mid@4`` (``--dissect-samples`` samples) for the IoU column that starts α;
2. learn α over the window ``mid@0-9`` (every step: the window docs/diffusion.md recommends
   for removal), ablation term only, read on the concept's own pixels
   (``gdx.optimize_units(..., insert_weight=0, ablation_read="concept", lr=0.05)``);
3. pick 20 units from α's top 40 (``--candidates``) by greedy forward selection under hard
   ablation (``gdx.select_units``: each round adds the unit that leaves the fewest concept
   pixels on the ``--focus`` 16 samples of ``--pool`` 96 with the most of the concept;
   ``--shortlist K`` retries only the previous round's best K, for larger ``--focus``).

Writes each ranking as ``OUT/CONCEPT.json`` (a ``gdx.causal.UnitRanking``, loadable with
``gdx.load_result``) and ``OUT/command.json``; ``tests/test_scene_diffusion_causal.py``
measures the shipped rankings on held-out samples::

    python -m tools.scenes.diffusion_removal --concepts tree,brick,road \\
        --out docs/results/diffusion_rankings
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

import gdx

BLOCK = "mid"
RANK_STEP = 4
WINDOW = "mid@0-9"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--concepts", default="tree,brick,road")
    p.add_argument("--out", default="docs/results/diffusion_rankings")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights", default="", help="another scene-diffusion export (default: the shipped one)")
    p.add_argument("--dissect-samples", type=int, default=80)
    p.add_argument("--alpha-samples", type=int, default=60)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--pool", type=int, default=96)
    p.add_argument("--focus", type=int, default=16)
    p.add_argument("--candidates", type=int, default=0, help="α's top K are the candidates (default: 2 x --top)")
    p.add_argument("--shortlist", type=int, default=None,
                   help="after round 1, retry only this many of the round before's best candidates (default: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen, seg = gdx.load_generator("scene-diffusion", weights=args.weights), gdx.load_segmenter("scene")
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:.0f} s] {message}", flush=True)

    dissection = gdx.dissect(gen, seg, f"{BLOCK}@{RANK_STEP}", samples=args.dissect_samples, seed=0, batch_size=40,
                             progress=False)
    for concept in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        alpha = gdx.optimize_units(gen, seg, WINDOW, concept, samples=args.alpha_samples, seed=0, epochs=args.epochs,
                                   init=dissection, batch_size=20, insert_weight=0, ablation_read="concept",
                                   lr=0.05)
        candidates = alpha.top(args.candidates or 2 * args.top)  # select_units' own default for a ranking: 2 x top
        log(f"{concept}: alpha top {len(candidates)}: {candidates}")
        ranking = gdx.select_units(gen, seg, WINDOW, concept, candidates, n=args.top, pool=args.pool, focus=args.focus,
                                   seed=0, shortlist=args.shortlist, progress=log)
        ranking.save(out / f"{concept}.json")
        log(f"{concept}: chosen {ranking.top(args.top)} -> {out / (concept + '.json')}")
    from gdx.plugins.generators.scene_diffusion import WEIGHTS_DIR, WEIGHTS_NAME

    weights = Path(args.weights) if args.weights else WEIGHTS_DIR / WEIGHTS_NAME
    (out / "command.json").write_text(json.dumps({
        "argv": sys.argv[1:] if argv is None else argv, "args": vars(args),
        # the rankings belong to these weights: the test refuses them for any other
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "seconds": round(time.time() - started, 1)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
