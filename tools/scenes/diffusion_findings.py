"""Findings on the bundled scene-diffusion model: which blocks and steps carry which concepts,
and what ablating a concept's units at early vs late steps does.

Never run in CI (minutes on two cores). Two parts, both on the shipped weights:

1. **Blocks x steps.** One ``gdx.dissect`` over every ``BLOCK@K`` of ``--blocks`` x ``--steps``
   (the addresses share the forward passes), ``--samples`` samples of seed 0, quantile 0.99,
   against the scene segmenter: interpretable units (IoU > 0.05), the concepts they cover
   and the significant units (FDR 5%) in each cell.
2. **Early vs late ablation.** For each concept of ``--concepts``, the top ``--top`` units
   by IoU at ``--ablate-block@--rank-step`` (one dissected cell, so every window edits the
   same units) are switched off over each step window of ``--windows``, on ``--eval-samples``
   held-out samples of ``--eval-seed`` (1); the fraction of the concept's pixels removed (1 - sum after /
   sum before over samples containing it: ``gdx.causal_effect``'s ``removed``) next to
   ``--top`` random units of the same block (mean of ``--control-draws`` draws), and a
   picture grid (rows: held-out samples with the most of the concept; columns: unedited,
   then each window).

Writes ``--out`` (JSON with every number and the command) and ``--grid`` (PNG)::

    python -m tools.scenes.diffusion_findings --threads 2 \\
        --out docs/results/diffusion_findings.json --grid docs/diffusion_ablation.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import gdx
from gdx.causal import random_units
from gdx.sampling import label_fractions, latent_batches, segment_images

BLOCKS = "down1,down2,mid,up2,up1"
STEPS = "0,2,4,6,8"
WINDOWS = "0-2,3-5,6-9,0-4,0-9"
CONCEPTS = "tree,water,brick,road"
#: GANPaint settings tried in part 3: dissected step : edited window
PAINT = "up2@4:up2@0-4,mid@4:mid@0-4,down2@4:down2@0-4,up1@4:up1@4,up1@4:up1@0-4,up1@4:up1@5-9,up1@4:up1@0-9"


def removed_fraction(before: torch.Tensor, after: torch.Tensor, index: int) -> float:
    """1 - sum(after) / sum(before) of label ``index`` over the samples that contain it (N x L fractions)."""
    contains = before[:, index] > 0
    total = float(before[contains, index].sum())
    return 1.0 - float(after[contains, index].sum()) / total if total > 0 else float("nan")


@torch.no_grad()
def label_fractions_under(generator: gdx.Generator, segmenter: gdx.Segmenter, samples: int, seed: int,
                          layer: str | None = None, units: list[int] | None = None,
                          batch_size: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel fractions N x L, images N x 3 x H x W) of ``samples`` samples, with ``units`` of ``layer`` off."""
    fractions, images = [], []
    for z in latent_batches(generator, samples, seed=seed, batch_size=batch_size):
        if layer is None:
            x = generator.generate(z)
        else:
            with gdx.intervene(generator, layer, units):
                x = generator.generate(z)
        fractions.append(label_fractions(segment_images(segmenter, x), len(segmenter.labels)).cpu())
        images.append(x.cpu())
    return torch.cat(fractions), torch.cat(images)


def cell_summary(d: gdx.Dissection) -> dict[str, object]:
    s = d.summary(iou_min=0.05)
    return {"interpretable": s.interpretable, "concepts": len(s.per_concept), "per_concept": dict(s.per_concept),
            "significant": len(d.significant(0.05))}


def blocks_by_steps(gen: gdx.Generator, seg: gdx.Segmenter, blocks: list[str], steps: list[int], samples: int,
                    batch_size: int) -> dict[str, gdx.Dissection]:
    layers = [f"{b}@{k}" for b in blocks for k in steps]
    results = gdx.dissect(gen, seg, layers, samples=samples, seed=0, batch_size=batch_size, progress=False)
    return {d.layer: d for d in results}


def markdown_table(cells: dict[str, dict[str, object]], blocks: list[str], steps: list[int]) -> str:
    """Rows: blocks; columns: steps; a cell: interpretable units · concepts (significant units)."""
    head = "| block (units, grid) | " + " | ".join(f"step {k}" for k in steps) + " |"
    lines = [head, "|---" * (len(steps) + 1) + "|"]
    for b in blocks:
        row = [f"{cells[f'{b}@{k}']['interpretable']} · {cells[f'{b}@{k}']['concepts']} "
               f"({cells[f'{b}@{k}']['significant']})" for k in steps]
        lines.append(f"| `{b}` ({cells[f'{b}@{steps[0]}']['units']}) | " + " | ".join(row) + " |")
    return "\n".join(lines)


def ablation(gen: gdx.Generator, seg: gdx.Segmenter, ranking: gdx.Dissection, block: str, rank_step: int,
             windows: list[str], concepts: list[str], *, top: int, eval_samples: int, control_draws: int,
             batch_size: int, rankings: dict[str, gdx.UnitRanking] | None = None, eval_seed: int = 1,
             ) -> tuple[dict[str, object], torch.Tensor, dict[str, torch.Tensor]]:
    """Removal per concept x window (top units and random units), the unedited images, the ablated ones.

    ``rankings`` (per concept) replaces the IoU ranking of ``ranking`` for the units switched off."""
    labels = list(seg.labels)
    before, images = label_fractions_under(gen, seg, eval_samples, eval_seed, batch_size=batch_size)
    controls = [random_units(ranking.units, top, seed=1 + d) for d in range(control_draws)]
    out: dict[str, object] = {"block": block, "rank_step": rank_step, "top": top, "eval_samples": eval_samples,
                              "eval_seed": eval_seed, "control_draws": control_draws, "controls": controls,
                              "coverage": {c: float(before[:, labels.index(c)].mean()) for c in concepts},
                              "ranked_by": "saved rankings" if rankings else f"IoU at {block}@{rank_step}",
                              "units": {c: rankings[c].top(top) if rankings else ranking.top_units(c, n=top)
                                        for c in concepts}, "windows": {}}
    edited: dict[str, torch.Tensor] = {}
    for window in windows:
        layer = f"{block}@{window}"
        row: dict[str, object] = {}
        for c in concepts:
            units: list[int] = out["units"][c]  # type: ignore[index]
            after, x = label_fractions_under(gen, seg, eval_samples, eval_seed, layer, units, batch_size=batch_size)
            row[c] = removed_fraction(before, after, labels.index(c))
            edited[f"{c}:{window}"] = x
        draws = [label_fractions_under(gen, seg, eval_samples, eval_seed, layer, u, batch_size=batch_size)[0]
                 for u in controls]
        row["random"] = {c: [removed_fraction(before, a, labels.index(c)) for a in draws] for c in concepts}
        out["windows"][window] = row  # type: ignore[index]
        print(f"  {layer}: " + ", ".join(f"{c} {row[c]:.2f}" for c in concepts)
              + " | random " + ", ".join(f"{c} {sum(v) / len(v):+.2f}"
                                         for c, v in row["random"].items()),  # type: ignore[union-attr]
              flush=True)
    return out, images, edited


def save_grid(path: Path, seg: gdx.Segmenter, concepts: list[str], windows: list[str], images: torch.Tensor,
              edited: dict[str, torch.Tensor], rows_per_concept: int, scale: int = 2) -> None:
    """Rows: for each concept, the held-out samples with the most of it; columns: unedited, then each window."""
    from PIL import Image, ImageDraw

    labels = list(seg.labels)
    with torch.no_grad():
        maps = segment_images(seg, images)
    size = images.shape[-1] * scale
    gap, left, top = 4, 70, 16
    rows = [(c, int(i)) for c in concepts
            for i in (maps == labels.index(c)).flatten(1).sum(1).argsort(descending=True)[:rows_per_concept]]
    cols = ["unedited"] + [f"off @{w}" for w in windows]
    canvas = Image.new("RGB", (left + len(cols) * (size + gap), top + len(rows) * (size + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(cols):
        draw.text((left + j * (size + gap) + 2, 2), name, fill="black")
    for r, (c, i) in enumerate(rows):
        y = top + r * (size + gap)
        draw.text((2, y + size // 2 - 6), f"{c} #{i}", fill="black")
        tiles = [images[i]] + [edited[f"{c}:{w}"][i] for w in windows]
        for j, t in enumerate(tiles):
            rgb = ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            canvas.paste(Image.fromarray(rgb).resize((size, size), Image.NEAREST), (left + j * (size + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


def _segment_one(seg: gdx.Segmenter, rgb: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    out = segment_images(seg, x)[0]
    return out if out.dim() == 2 else out[0]


def _grass_window(seg_map: torch.Tensor, tree: int, grass: int, size: int,
                  margin: int) -> tuple[float, int, int] | None:
    """(grass share, y, x) of the size x size window with the most grass and no tree in it or its margin."""
    h, w = seg_map.shape
    best = None
    for y in range(margin, h - size - margin + 1, 2):
        for x in range(margin, w - size - margin + 1, 2):
            around = seg_map[y - margin : y + size + margin, x - margin : x + size + margin]
            if float((around == tree).float().mean()) > 0.02:
                continue
            score = float((seg_map[y : y + size, x : x + size] == grass).float().mean())
            if best is None or score > best[0]:
                best = (score, y, x)
    return best


def paint_trees(gen: gdx.Generator, seg: gdx.Segmenter, configs: list[str], *, samples: int, paint_samples: int,
                dissections: dict[str, gdx.Dissection], size: int = 19) -> dict[str, dict[str, object]]:
    """GANPaint "draw tree" over the grassiest tree-free size x size window of samples 0.. (>= half grass),
    for each ``dissected step:edited window``: the mean gain of tree's share of the window."""
    from gdx.paint.engine import PaintEngine, Stroke

    labels = list(seg.labels)
    tree, grass = labels.index("tree"), labels.index("grass")
    out: dict[str, dict[str, object]] = {}
    for cfg in configs:
        ranked_at, window = cfg.split(":")
        if ranked_at not in dissections:  # normally dissected in part 1
            dissections[ranked_at] = gdx.dissect(gen, seg, ranked_at, samples=samples, seed=0, progress=False)
        engine = PaintEngine.build(gen, dissections[ranked_at], samples=100, edit_layer=window)
        gains = []
        for s in range(paint_samples):
            before = engine.render(s)
            seg_before = _segment_one(seg, before)
            found = _grass_window(seg_before, tree, grass, size, 3)
            if found is None or found[0] < 0.5:
                continue
            _, y, x = found
            mask = torch.zeros(before.shape[:2], dtype=torch.bool)
            mask[y : y + size, x : x + size] = True
            seg_after = _segment_one(seg, engine.render(s, [Stroke("tree", "draw", mask)]))
            win = (slice(y, y + size), slice(x, x + size))
            gains.append(float((seg_after[win] == tree).float().mean() - (seg_before[win] == tree).float().mean()))
        out[cfg] = {"samples": len(gains), "mean_gain": sum(gains) / max(1, len(gains)), "gains": gains,
                    "tree_units": len(engine.concepts["tree"].units) if "tree" in engine.concepts else 0}
        print(f"  paint tree, ranked at {ranked_at}, drawn over {window}: mean gain {out[cfg]['mean_gain']:+.2f} "
              f"of a {size}x{size} window ({len(gains)} samples)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--weights", default="", help="another scene-diffusion export (default: the shipped weights)")
    p.add_argument("--blocks", default=BLOCKS)
    p.add_argument("--steps", default=STEPS, help="steps dissected in part 1")
    p.add_argument("--samples", type=int, default=300, help="samples of seed 0 per dissected cell")
    p.add_argument("--ablate-block", default="mid")
    p.add_argument("--rank-step", type=int, default=4, help="the step whose IoU ranks the units to ablate")
    p.add_argument("--windows", default=WINDOWS)
    p.add_argument("--concepts", default=CONCEPTS)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--rankings", default="", help="a folder of saved unit rankings CONCEPT.json (e.g. "
                   "docs/results/diffusion_rankings) to ablate instead of the IoU ranking")
    p.add_argument("--eval-samples", type=int, default=80, help="held-out samples for the ablations")
    p.add_argument("--eval-seed", type=int, default=1, help="their latent seed (the searches used 0)")
    p.add_argument("--control-draws", type=int, default=3)
    p.add_argument("--grid-rows", type=int, default=2, help="grid rows per concept")
    p.add_argument("--paint", default=PAINT, help="GANPaint settings of part 3 ('' skips it)")
    p.add_argument("--paint-samples", type=int, default=12, help="samples 0.. tried for a tree stroke")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parts", default="table,ablation,paint",
                   help="which parts to run (e.g. 'table' in one process and 'ablation,paint' in another)")
    p.add_argument("--out", default="docs/results/diffusion_findings.json")
    p.add_argument("--grid", default="docs/diffusion_ablation.png")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen, seg = gdx.load_generator("scene-diffusion", weights=args.weights), gdx.load_segmenter("scene")
    blocks, steps = args.blocks.split(","), [int(k) for k in args.steps.split(",")]
    windows, concepts = args.windows.split(","), args.concepts.split(",")
    shipped = Path(gdx.plugins.generators.__file__).parent / "weights" / "scene_diffusion.safetensors"
    weights_file = Path(args.weights) if args.weights else shipped
    weights = json.loads(weights_file.with_suffix(".json").read_text())
    command = " ".join(["python -m tools.scenes.diffusion_findings", *(argv or sys.argv[1:])])
    result: dict[str, object] = {"command": command, "args": vars(args),
                                 "weights": {k: weights.get(k) for k in ("train_steps", "run_steps")}}
    started = time.time()
    dissections: dict[str, gdx.Dissection] = {}
    parts = set(args.parts.split(","))
    if "table" in parts:
        dissections = blocks_by_steps(gen, seg, blocks, steps, args.samples, args.batch_size)
        cells = {name: {**cell_summary(d), "units": d.units} for name, d in dissections.items()}
        result["cells"], result["table"] = cells, markdown_table(cells, blocks, steps)
        result["table_seconds"] = round(time.time() - started, 1)
        print(result["table"], flush=True)
    if "ablation" in parts:
        t = time.time()
        ranked_at = f"{args.ablate_block}@{args.rank_step}"
        if ranked_at not in dissections:
            dissections[ranked_at] = gdx.dissect(gen, seg, ranked_at, samples=args.samples, seed=0,
                                                 batch_size=args.batch_size, progress=False)
        abl, images, edited = ablation(gen, seg, dissections[ranked_at], args.ablate_block, args.rank_step,
                                       windows, concepts, top=args.top, eval_samples=args.eval_samples,
                                       control_draws=args.control_draws, batch_size=args.batch_size,
                                       eval_seed=args.eval_seed,
                                       rankings={c: gdx.load_result(Path(args.rankings) / f"{c}.json")
                                                 for c in concepts} if args.rankings else None)
        result["ablation"], result["ablation_seconds"] = abl, round(time.time() - t, 1)
        save_grid(Path(args.grid), seg, concepts[:3], windows, images, edited, args.grid_rows)
    if "paint" in parts and args.paint:
        t = time.time()
        result["paint"] = paint_trees(gen, seg, args.paint.split(","), samples=args.samples,
                                      paint_samples=args.paint_samples, dissections=dissections)
        result["paint_seconds"] = round(time.time() - t, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"done in {time.time() - started:.0f} s -> {out}" + (f", {args.grid}" if "ablation" in parts else ""))


if __name__ == "__main__":
    main()
