"""What an artifact repair does to the grass texture: does it weaken the vertical streaks?

The scene GAN's most visible artifact is vertical streaks through grass and trees
(docs/scene_grid.png). A streak is a horizontal intensity step that persists down the
image, so this measures, on the grass (``--region``: the rendered label maps' grass, and
the scene segmenter's grass on the unrepaired samples, the same pixels for every unit set),
in gray values, with ``dx`` the horizontal derivative:

* ``streak``: the correlation of ``dx`` with itself ``--lag`` rows further down: the
  *share* of the horizontal texture that persists (rendered grass: about 0.06);
* ``long``: the covariance of ``dx`` with itself at ``--long-lags`` (default 14-20 rows;
  rendered grass: 0.00), x 1000, mean over the lags: how *strong* the steps are that
  persist like streaks. Not divided by the variance, so a repair that softens all texture
  lowers it as much as it lowers the variance (compare ``h``);
* ``long_corr``: the correlation at the same lags (the streaks' share of what is left);
* ``h``/``v``: the mean absolute horizontal / vertical derivative (texture energy).

for rendered scenes, the generator's samples, the samples with ``--ablate`` off, and
``--control-draws`` random unit sets of the same size and layer. Numbers closer to the
rendered scenes' are better (docs/intervention.md)::

    python benchmarks/repair_texture.py --ablate layer7:15,26,14 --samples 300 \
        --out docs/results/repair_texture.json --grid docs/repair_streaks.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import gdx
from gdx.causal import random_units
from gdx.scenes import render_scenes


def texture_per_image(images: torch.Tensor, region: torch.Tensor, lag: int = 3,
                      long_lags: tuple[int, ...] = (14, 16, 18, 20)) -> dict[str, torch.Tensor]:
    """``streak``, ``long``, ``long_corr``, ``h`` and ``v`` (module docs) of each of N x 3 x H x W
    images in [-1, 1], over the pixels of ``region`` (N x H x W bool): a derivative counts where
    both of its pixels are in the region, a pair of rows where both derivatives count."""
    gray = images.mean(1)
    dx, inside = gray[..., 1:] - gray[..., :-1], (region[..., 1:] & region[..., :-1]).float()
    dy, inside_y = gray[:, 1:] - gray[:, :-1], (region[:, 1:] & region[:, :-1]).float()
    count = inside.sum((1, 2)).clamp_min(1)
    centred = (dx - (dx * inside).sum((1, 2), keepdim=True) / count[:, None, None]) * inside
    variance = (centred.pow(2).sum((1, 2)) / count).clamp_min(1e-8)

    def covariance(k: int) -> torch.Tensor:
        if not 0 < k < centred.shape[1]:
            raise SystemExit(f"lag {k} must be between 1 and {centred.shape[1] - 1} (the image's rows)")
        pairs = (inside[:, k:] * inside[:, :-k]).sum((1, 2)).clamp_min(1)
        return (centred[:, k:] * centred[:, :-k]).sum((1, 2)) / pairs

    far = torch.stack([covariance(k) for k in long_lags])
    return {"streak": covariance(lag) / variance, "long": 1000 * far.mean(0), "long_corr": (far / variance).mean(0),
            "h": (dx.abs() * inside).sum((1, 2)) / count,
            "v": (dy.abs() * inside_y).sum((1, 2)) / inside_y.sum((1, 2)).clamp_min(1)}


def mean_texture(per_image: dict[str, torch.Tensor], region: torch.Tensor) -> dict[str, float]:
    """The means of :func:`texture_per_image`'s values over the images that have any of ``region``."""
    some = region.flatten(1).sum(1) > 1
    return {k: float(v[some].mean()) for k, v in per_image.items()}


def save_grid(before: torch.Tensor, after: torch.Tensor, path: str, scale: int = 4) -> None:
    """Before (top row) and after (bottom row), each image enlarged ``scale`` x (nearest) so streaks show."""
    from PIL import Image

    pad = torch.ones(3, before.shape[-2] * scale, 4)
    rows = [torch.cat([torch.cat([F.interpolate(x[None], scale_factor=scale, mode="nearest")[0], pad], 2)
                       for x in batch], 2) for batch in (before, after)]
    grid = torch.cat([rows[0], torch.ones(3, 4, rows[0].shape[-1]), rows[1]], 1)
    Image.fromarray(((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(path)


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--gen", default="scene")
    p.add_argument("--ablate", default="layer7:15,26,14", help="LAYER:U,U,... (the repair to measure)")
    p.add_argument("--samples", type=int, default=300, help="samples of --seed and rendered scenes")
    p.add_argument("--seed", type=int, default=1, help="latent seed (1: the repair's held-out seed)")
    p.add_argument("--real-seed", type=int, default=20_000)
    p.add_argument("--control-draws", type=int, default=5)
    p.add_argument("--lag", type=int, default=3)
    p.add_argument("--long-lags", default="14,16,18,20", help="rows apart for `long` (module docs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--region", default="grass",
                   help="a label of the scene world (its pixels in the rendered label maps, and the scene segmenter's "
                        "on the unrepaired samples), or 'ground' for the lower 3/8 of every image")
    p.add_argument("--out", default="", help="also write the result JSON here")
    p.add_argument("--grid", default="", help="write before/after of the samples with the strongest streaks here")
    p.add_argument("--grid-samples", type=int, default=6, help="how many (the highest `long` before the repair)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    layer, _, units_text = args.ablate.partition(":")
    units = [int(u) for u in units_text.split(",") if u]
    if not layer or not units:
        p.error(f"--ablate must look like layer7:15,26,14, got {args.ablate!r}")
    lags = tuple(int(k) for k in args.long_lags.split(",") if k.strip())
    gen = gdx.load_generator(args.gen)
    z = gen.sample_latents(args.samples, seed=args.seed)
    with torch.no_grad(), gdx.Trace(gen.module, layer) as tr:
        first = gen.generate(z[:1])
    size = int(tr[layer].shape[1])  # units of the layer, for the random sets
    rendered = render_scenes(args.samples, seed=args.real_seed, size=int(first.shape[-1]))
    real = rendered.images

    def repaired(off: list[int]) -> torch.Tensor:
        with torch.no_grad(), gdx.intervene(gen, layer, off, value=0.0):
            return gen.generate(z)

    with torch.no_grad():
        images = gen.generate(z)
    if args.region == "ground":
        lower = torch.zeros(images.shape[-2:], dtype=torch.bool)
        lower[images.shape[-2] * 5 // 8 :] = True
        region_real, region = lower.expand(len(real), -1, -1), lower.expand(len(images), -1, -1)
    else:
        from gdx.sampling import concept_mask, segment_images
        from gdx.scenes import LABELS

        if args.region not in LABELS:
            p.error(f"--region must be 'ground' or one of {', '.join(LABELS)}, got {args.region!r}")
        region_real = rendered.labels == LABELS.index(args.region)
        seg = gdx.load_segmenter("scene")
        with torch.no_grad():
            region = concept_mask(segment_images(seg, images), list(seg.labels).index(args.region)).cpu()

    def texture(x: torch.Tensor, where: torch.Tensor = region) -> dict[str, torch.Tensor]:
        return texture_per_image(x, where, args.lag, lags)

    after, sampled = repaired(units), texture(images)
    rows = {"rendered": mean_texture(texture(real, region_real), region_real),
            "generator": mean_texture(sampled, region), f"{args.ablate} off": mean_texture(texture(after), region)}
    if args.grid:
        worst = torch.argsort(sampled["long"], descending=True)[:args.grid_samples]
        save_grid(images[worst], after[worst], args.grid)
        print(f"before/after of samples {worst.tolist()} (the strongest streaks) -> {args.grid}")
    for d in range(args.control_draws):
        drawn = random_units(size, len(units), seed=1 + d)
        rows[f"random {layer}:{','.join(map(str, drawn))} off"] = mean_texture(texture(repaired(drawn)), region)
    print(f"| {args.samples} samples | streak (lag {args.lag}) | long (lags {args.long_lags}) | long_corr | h | v |\n"
          "|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['streak']:.3f} | {r['long']:.2f} | {r['long_corr']:.3f} | {r['h']:.3f} | {r['v']:.3f} |")
    result: dict[str, object] = {"args": vars(args), "rows": rows}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
