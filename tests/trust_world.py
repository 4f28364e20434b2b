"""A hand-built world for trusting labels: planted, distractor, noise and spatial-prior units.

Images (32 x 32) have a sky band at the top whose height varies per sample, ground
below and, in ~60% of samples, a round tree somewhere in the lower part. The layer
``features`` (8 x 8) holds:

* unit 0: the tree's mask (the decoder paints the tree from it: planted and causal);
* unit 1: a weaker, noisier copy of the tree mask the decoder never reads (a distractor);
* units 2..5: smooth random fields independent of the image (noise);
* unit 6: a band at the top of the image whose height varies independently of the
  sky's (a spatial-prior unit: high IoU with sky, for where it fires, not what it draws);
* units 7..7+extra-1 (``extra`` > 0): tree masks with growing noise (for coverage tests).

The segmenter reads sky / ground / tree back from the colours exactly.
"""

from __future__ import annotations

import torch
from torch import nn

import gdx

LABELS = ["sky", "ground", "tree"]
PALETTE = torch.tensor([[-0.5, -0.1, 0.9], [0.3, 0.0, -0.5], [-0.8, 0.7, -0.8]])
GRID, RES, LATENT = 8, 32, 16
PLANTED, DISTRACTOR, NOISE, PRIOR = [0], [1], [2, 3, 4, 5], [6]


def _coords(z: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(size, dtype=z.dtype, device=z.device) + 0.5) / size
    return torch.meshgrid(c, c, indexing="ij")


def _tree(z: torch.Tensor, size: int) -> torch.Tensor:
    yy, xx = _coords(z, size)
    cy = 0.55 + 0.3 * torch.sigmoid(z[:, 1])
    cx = torch.sigmoid(z[:, 2])
    present = (z[:, 3] > -0.25).to(z.dtype)
    d2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
    return 2.0 * torch.exp(-d2 / (2 * 0.12 ** 2)) * present[:, None, None]


class TrustFeatures(nn.Module):
    def __init__(self, extra: int = 0) -> None:
        super().__init__()
        self.extra = extra

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        yy, xx = _coords(z, GRID)
        tree = _tree(z, GRID)
        fields = [torch.sin((3 + k) * xx + 4 * z[:, 4 + k, None, None]) * torch.cos((2 + k) * yy + 3 * z[:, 8 + k, None, None])
                  for k in range(4)]
        band = 0.2 + 0.15 * torch.sigmoid(z[:, 12])
        prior = torch.sigmoid((band[:, None, None] - yy) * 30.0) + 0.01 * xx
        distract = 0.5 * tree + 0.6 * fields[0]
        units = [tree, distract, *fields, prior]
        for k in range(self.extra):
            units.append(tree + (0.2 + 0.15 * k) * fields[k % 4] + 0.05 * k * xx)
        return torch.stack(units, 1)


class TrustDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("palette", PALETTE.clone())

    def forward(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        yy, _ = _coords(z, RES)
        tree = nn.functional.interpolate(r[:, :1], size=(RES, RES), mode="bilinear", align_corners=False)[:, 0]
        sky_h = 0.2 + 0.15 * torch.sigmoid(z[:, 0])
        label = torch.where(yy[None] < sky_h[:, None, None], 0, 1)
        label = torch.where(tree > 1.0, 2, label)
        return self.palette[label].permute(0, 3, 1, 2).contiguous()


class TrustGenerator(nn.Module):
    def __init__(self, extra: int = 0) -> None:
        super().__init__()
        self.features = TrustFeatures(extra)
        self.decoder = TrustDecoder()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(z), z)


def segment(images: torch.Tensor) -> torch.Tensor:
    d = ((images.permute(0, 2, 3, 1)[..., None, :] - PALETTE.to(images)) ** 2).sum(-1)
    return d.argmin(-1)


def trust_pair(extra: int = 0) -> tuple[gdx.Generator, gdx.Segmenter]:
    gen = gdx.wrap_generator(TrustGenerator(extra).eval(), latent_shape=(LATENT,), name=f"trust{extra}",
                             default_layer="features")
    seg = gdx.wrap_segmenter(segment, labels=LABELS, name="trust-seg",
                             categories={"sky": "stuff", "ground": "stuff", "tree": "object"})
    return gen, seg
