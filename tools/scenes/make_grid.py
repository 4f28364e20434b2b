"""Draw docs/scene_grid.png: real scenes, GAN, VAE and diffusion samples, each above its
segmentation by the bundled scene segmenter, with a colour legend of the labels.

Why a script: the picture in the docs must come from the shipped weights, and be
redrawn whenever they change.

    python -m tools.scenes.make_grid --out docs/scene_grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gdx.scenes.render import LABELS, render_scenes

#: One display colour per label (RGB 0-255), in LABELS order.
PALETTE = torch.tensor(
    [
        (120, 170, 240),  # sky
        (250, 250, 250),  # cloud
        (255, 220, 40),  # sun
        (120, 100, 140),  # mountain
        (20, 60, 200),  # water
        (110, 200, 60),  # grass
        (90, 90, 90),  # road
        (10, 100, 30),  # tree
        (230, 200, 150),  # building
        (190, 60, 40),  # brick
        (120, 30, 60),  # roof
        (240, 150, 20),  # dome
        (80, 40, 10),  # door
        (0, 220, 220),  # window
    ],
    dtype=torch.uint8,
)


def colorize(labels: torch.Tensor) -> torch.Tensor:
    """Label maps N x H x W -> RGB uint8 N x H x W x 3 (-1 = black)."""
    out = PALETTE[labels.clamp_min(0)]
    out[labels < 0] = 0
    return out


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images N x 3 x H x W in [-1, 1] -> uint8 N x H x W x 3."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def _band(images: torch.Tensor, segment) -> torch.Tensor:
    """Two rows (pictures over their segmentations) with a 2-pixel white gap between tiles."""
    rgb, seg = to_rgb(images), colorize(segment(images))

    def row(tiles: torch.Tensor) -> torch.Tensor:
        pad = torch.full((tiles.shape[0], tiles.shape[1], 2, 3), 255, dtype=torch.uint8)
        return torch.cat([torch.cat([t, p], dim=1) for t, p in zip(tiles, pad)], dim=1)

    gap = torch.full((2, row(rgb).shape[1], 3), 255, dtype=torch.uint8)
    return torch.cat([row(rgb), gap, row(seg), gap, gap, gap], dim=0)


@torch.no_grad()
def make_grid(out: Path, n: int = 8, seed: int = 0) -> None:
    from PIL import Image, ImageDraw

    import gdx

    seg = gdx.load_segmenter("scene")
    bands = [("rendered scenes", render_scenes(n, seed=seed + 31_337).images)]
    for title, name in (("scene GAN samples", "scene"), ("scene VAE samples", "scene-vae"),
                        ("scene-diffusion samples (10 Euler steps)", "scene-diffusion")):
        gen = gdx.load_generator(name)
        bands.append((title, gen.generate(gen.sample_latents(n, seed=seed)).clamp(-1, 1)))
    scale, margin = 3, 14
    pictures = [_band(images, seg.segment) for _, images in bands]
    width = pictures[0].shape[1] * scale
    legend_h = 16 * ((len(LABELS) + 6) // 7)
    height = sum(p.shape[0] * scale + margin for p in pictures) + legend_h
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for (title, _), pic in zip(bands, pictures):
        draw.text((2, y + 1), title + " (top) and their segmentation (bottom)", fill="black")
        img = Image.fromarray(pic.numpy()).resize((pic.shape[1] * scale, pic.shape[0] * scale), Image.NEAREST)
        canvas.paste(img, (0, y + margin))
        y += margin + img.height
    for i, name in enumerate(LABELS):
        x, yy = (i % 7) * (width // 7) + 2, y + (i // 7) * 16 + 2
        draw.rectangle([x, yy, x + 12, yy + 12], fill=tuple(int(c) for c in PALETTE[i]), outline="black")
        draw.text((x + 16, yy + 1), name, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/scene_grid.png")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    make_grid(Path(args.out), n=args.n, seed=args.seed)


if __name__ == "__main__":
    main()
