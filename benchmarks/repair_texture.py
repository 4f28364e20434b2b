"""What an artifact repair does to the ground's texture: does it remove the vertical streaks?

The scene GAN's most visible artifact is vertical streaks through grass and trees
(docs/scene_grid.png). A streak is a horizontal intensity step that persists down the
image, so this measures, on the ground (the lower 3/8 of each image, gray values):

* ``streak``: the correlation of the horizontal derivative with itself ``--lag`` rows
  further down (rendered grass noise decorrelates within a few rows; a streak does not);
* ``h``/``v``: the mean absolute horizontal / vertical derivative (texture energy).

for rendered scenes, the generator's samples, the samples with ``--ablate`` off, and
``--control-draws`` random unit sets of the same size and layer. Numbers closer to the
rendered scenes' are better; a repair that lowers ``h`` while ``streak`` stays or rises
smooths the texture rather than removing streaks (docs/intervention.md)::

    python benchmarks/repair_texture.py --ablate layer7:15,26,14 --samples 300
"""

from __future__ import annotations

import argparse
import json

import torch

import gdx
from gdx.causal import random_units
from gdx.scenes import render_scenes


def ground_texture(images: torch.Tensor, lag: int = 3) -> dict[str, float]:
    """``streak``, ``h`` and ``v`` (module docs) of N x 3 x H x W images in [-1, 1], means over images."""
    gray = images[:, :, images.shape[-2] * 5 // 8 :].mean(1)
    dx = gray[..., 1:] - gray[..., :-1]
    centred = dx - dx.mean()
    streak = (centred[:, lag:] * centred[:, :-lag]).mean((1, 2)) / centred.pow(2).mean((1, 2)).clamp_min(1e-8)
    dy = gray[:, 1:] - gray[:, :-1]
    return {"streak": float(streak.mean()), "h": float(dx.abs().mean()), "v": float(dy.abs().mean())}


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--gen", default="scene")
    p.add_argument("--ablate", default="layer7:15,26,14", help="LAYER:U,U,... (the repair to measure)")
    p.add_argument("--samples", type=int, default=300, help="samples of --seed and rendered scenes")
    p.add_argument("--seed", type=int, default=1, help="latent seed (1: the repair's held-out seed)")
    p.add_argument("--real-seed", type=int, default=20_000)
    p.add_argument("--control-draws", type=int, default=5)
    p.add_argument("--lag", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    layer, _, units_text = args.ablate.partition(":")
    units = [int(u) for u in units_text.split(",") if u]
    if not layer or not units:
        p.error(f"--ablate must look like layer7:15,26,14, got {args.ablate!r}")
    gen = gdx.load_generator(args.gen)
    z = gen.sample_latents(args.samples, seed=args.seed)
    with torch.no_grad(), gdx.Trace(gen.module, layer) as tr:
        first = gen.generate(z[:1])
    size = int(tr[layer].shape[1])  # units of the layer, for the random sets
    real = render_scenes(args.samples, seed=args.real_seed, size=int(first.shape[-1])).images

    def under(off: list[int]) -> dict[str, float]:
        with torch.no_grad(), gdx.intervene(gen, layer, off, value=0.0):
            return ground_texture(gen.generate(z), args.lag)

    with torch.no_grad():
        sampled = ground_texture(gen.generate(z), args.lag)
    rows = {"rendered": ground_texture(real, args.lag), "generator": sampled, f"{args.ablate} off": under(units)}
    for d in range(args.control_draws):
        drawn = random_units(size, len(units), seed=1 + d)
        rows[f"random {layer}:{','.join(map(str, drawn))} off"] = under(drawn)
    print(f"| {args.samples} samples | streak (lag {args.lag}) | h | v |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['streak']:.3f} | {r['h']:.3f} | {r['v']:.3f} |")
    result: dict[str, object] = {"args": vars(args), "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
