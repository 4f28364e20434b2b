"""A tiny synthetic world with known units: the engine's built-in test pair.

SYNTHETIC, hand-built, untrained. ``ToyGenerator`` draws up to four coloured blobs
(sun, tree, rock, lake) on a sky background from a 16-d latent. Its layer
``features`` (U = 10 units on an 8x8 grid) is built so that the answer is known:

* unit ``c`` (c = 0..3) is the blob mask of concept ``c``: it causes the concept;
* unit ``4 + c`` is a weaker copy of unit ``c`` and is also used by the decoder;
* unit 8 is noise unrelated to any concept;
* unit 9 copies unit 0 (sun) but the decoder never reads it: it correlates with sun
  and causes nothing.

``ToySegmenter`` reads the concept back from the pixel colours exactly.
"""

from __future__ import annotations

import torch
from torch import nn

TOY_LABELS = ["sun", "tree", "rock", "lake"]
TOY_CATEGORIES = {"sun": "object", "tree": "object", "rock": "object", "lake": "stuff"}
#: Colours in [-1, 1]; index 0 is the background (sky).
TOY_PALETTE = torch.tensor(
    [[-0.6, -0.2, 0.9], [0.95, 0.9, -0.9], [-0.9, 0.6, -0.9], [0.2, -0.4, -0.6], [-0.9, -0.9, 0.2]]
)
LATENT_DIM = 16
GRID = 8


class ToyFeatures(nn.Module):
    """z (N x 16) -> unit maps (N x 10 x 8 x 8), each blob a Gaussian bump of height 2."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        coords = (torch.arange(GRID, dtype=z.dtype, device=z.device) + 0.5) / GRID
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        centres = torch.sigmoid(z[:, :8].view(n, 4, 2))  # (n, 4, [y, x]) in (0, 1)
        present = (z[:, 8:12] > -0.3).to(z.dtype)  # each concept is present ~62% of the time
        radius = 0.10 + 0.08 * torch.sigmoid(z[:, 12:16])
        d2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
        blobs = 2.0 * torch.exp(-d2 / (2 * radius[..., None, None] ** 2)) * present[..., None, None]
        noise = torch.sin(7 * xx + 3 * z[:, :1, None]) * torch.cos(5 * yy + 2 * z[:, 1:2, None])
        return torch.cat([blobs, 0.5 * blobs, noise[:, None], blobs[:, :1]], dim=1)


class ToyDecoder(nn.Module):
    """Unit maps -> image: upsample units 0..7 and paint the strongest concept."""

    def __init__(self, resolution: int = 32) -> None:
        super().__init__()
        self.resolution = resolution
        self.register_buffer("palette", TOY_PALETTE.clone())

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        strength = r[:, 0:4] + r[:, 4:8]  # unit 8 and unit 9 are never read
        up = nn.functional.interpolate(strength, size=(self.resolution,) * 2, mode="bilinear", align_corners=False)
        background = torch.full_like(up[:, :1], 1.0)
        scores = torch.cat([background, up], dim=1)
        weights = torch.softmax(scores * 12.0, dim=1)
        return torch.einsum("nkhw,kc->nchw", weights, self.palette)


class ToyGenerator(nn.Module):
    """The toy generator: ``features`` then ``decoder``."""

    def __init__(self, resolution: int = 32) -> None:
        super().__init__()
        self.features = ToyFeatures()
        self.decoder = ToyDecoder(resolution)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(z))


def toy_segment(images: torch.Tensor) -> torch.Tensor:
    """Nearest palette colour per pixel; the sky background is -1 (no label)."""
    palette = TOY_PALETTE.to(images.device, images.dtype)
    d = ((images[:, None] - palette[None, :, :, None, None]) ** 2).sum(2)
    return d.argmin(1) - 1
