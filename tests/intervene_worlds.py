"""Hand-built generator/segmenter pairs with known causal structure (intervention tests).

Street world (layer ``features``: 12 units on 8 x 8, image 32 x 32):

* units 0, 1, 2 each carry the tree blob; the decoder paints tree where their sum
  exceeds 1.5, so all three together cause trees (any two still do);
* unit 3 is a fourth copy of the tree blob that the decoder never reads: it
  correlates perfectly with tree and causes nothing;
* units 4, 5 carry the rock blob (rock where their sum exceeds 1);
* unit 6 is the building (the lower part of the image);
* unit 7 is the door blob; door is painted where 3 * door * building > 1, so a door
  can only appear on the building (the context rule);
* units 8..11 are patterns the decoder ignores.

Artifact world (layer ``features``: 6 units): units 0..3 paint coloured blobs, unit 4
paints a magenta blotch in about half the samples (the artifact), unit 5 is unused.
"""

from __future__ import annotations

import torch
from torch import nn

import gdx

GRID = 8
STREET_LABELS = ["tree", "rock", "building", "door"]
#: sky (background), tree, rock, building, door — RGB in [-1, 1]
STREET_PALETTE = torch.tensor(
    [[-0.5, -0.1, 0.9], [-0.8, 0.6, -0.8], [0.3, -0.3, -0.5], [0.7, 0.4, 0.1], [-0.9, -0.9, -0.9]]
)


def _coords(dtype, device):
    c = (torch.arange(GRID, dtype=dtype, device=device) + 0.5) / GRID
    return torch.meshgrid(c, c, indexing="ij")


def _blob(z2: torch.Tensor, present: torch.Tensor, yy, xx, radius: float = 0.16) -> torch.Tensor:
    centre = torch.sigmoid(z2)
    d2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * radius**2)) * present[:, None, None]


class StreetFeatures(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        yy, xx = _coords(z.dtype, z.device)
        tree = _blob(z[:, 0:2], (z[:, 2] > -0.5).to(z.dtype), yy, xx)
        rock = _blob(z[:, 3:5], (z[:, 5] > -0.5).to(z.dtype), yy, xx)
        top = 0.45 + 0.2 * torch.sigmoid(z[:, 6])
        building = torch.sigmoid((yy[None] - top[:, None, None]) * 30)
        door = _blob(z[:, 7:9], (z[:, 9] > 0).to(z.dtype), yy, xx, radius=0.12)
        pattern = [torch.sin((k + 2) * xx + z[:, k : k + 1, None]) * torch.cos((k + 1) * yy) for k in range(4)]
        units = [tree, tree, tree, tree, rock, rock, building, door] + pattern
        return torch.stack(units, dim=1)


class StreetDecoder(nn.Module):
    def __init__(self, resolution: int = 32) -> None:
        super().__init__()
        self.resolution = resolution
        self.register_buffer("palette", STREET_PALETTE.clone())

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        tree = r[:, 0] + r[:, 1] + r[:, 2] - 1.5
        rock = r[:, 4] + r[:, 5] - 1.0
        building = r[:, 6] - 0.5
        door = 3 * r[:, 7] * r[:, 6] - 1.0
        scores = torch.stack([torch.zeros_like(tree), tree, rock, building, door], 1)
        up = nn.functional.interpolate(scores, size=(self.resolution,) * 2, mode="bilinear", align_corners=False)
        weights = torch.softmax(up * 10.0, dim=1)
        return torch.einsum("nkhw,kc->nchw", weights, self.palette)


class StreetGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = StreetFeatures()
        self.decoder = StreetDecoder()

    def forward(self, z):
        return self.decoder(self.features(z))


class PaletteSegmenter(gdx.Segmenter):
    """Nearest palette colour; soft probabilities from negative squared distances."""

    name = "palette"

    def __init__(self, palette: torch.Tensor, labels: list[str], temperature: float = 20.0) -> None:
        self.palette = palette
        self._labels = labels
        self.temperature = temperature

    @property
    def labels(self):
        return self._labels

    def _dist(self, images):
        p = self.palette.to(images.device, images.dtype)
        return ((images[:, None] - p[None, :, :, None, None]) ** 2).sum(2)

    def segment(self, images):
        return self._dist(images).argmin(1) - 1

    def segment_probs(self, images):
        return torch.softmax(-self._dist(images) * self.temperature, dim=1)[:, 1:]


def street_pair():
    gen = gdx.wrap_generator(StreetGenerator(), latent_shape=(10,), name="street")
    return gen, PaletteSegmenter(STREET_PALETTE, STREET_LABELS)


# -- artifact world ----------------------------------------------------------------

ART_PALETTE = torch.tensor(
    [[0.0, 0.0, 0.0], [0.8, -0.6, -0.6], [-0.6, 0.8, -0.6], [-0.6, -0.6, 0.8], [0.8, 0.8, -0.6], [1.0, -1.0, 1.0]]
)


class ArtifactFeatures(nn.Module):
    def forward(self, z):
        yy, xx = _coords(z.dtype, z.device)
        blobs = [_blob(z[:, 2 * k : 2 * k + 2], torch.ones_like(z[:, 0]), yy, xx, 0.2) for k in range(4)]
        blotch = _blob(z[:, 8:10], (z[:, 10] > 0).to(z.dtype), yy, xx, 0.15)
        unused = torch.sin(3 * xx + z[:, 11:12, None]) * torch.ones_like(yy)
        return torch.stack(blobs + [blotch, unused], 1)


class ArtifactDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("palette", ART_PALETTE.clone())

    def forward(self, r):
        scores = torch.cat([torch.full_like(r[:, :1], 0.3), r[:, :5]], 1)
        up = nn.functional.interpolate(scores, size=(32, 32), mode="bilinear", align_corners=False)
        return torch.einsum("nkhw,kc->nchw", torch.softmax(up * 8.0, 1), self.palette)


class ArtifactGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = ArtifactFeatures()
        self.decoder = ArtifactDecoder()

    def forward(self, z):
        return self.decoder(self.features(z))


def artifact_generator():
    return gdx.wrap_generator(ArtifactGenerator(), latent_shape=(12,), name="artifact")


def clean_images(n: int, seed: int) -> torch.Tensor:
    """'Real' images: the artifact world without the blotch."""
    gen = ArtifactGenerator()
    z = gdx.seeded_normal(n, (12,), seed)
    z[:, 10] = -1.0
    with torch.no_grad():
        return gen(z)


def quadrant_features(images: torch.Tensor) -> torch.Tensor:
    """A fixed 12-d feature: mean colour of each image quadrant."""
    return nn.functional.adaptive_avg_pool2d(images, 2).reshape(images.shape[0], -1)


def magenta_critic(images: torch.Tensor) -> torch.Tensor:
    """A hand-built 'discriminator': less magenta looks more real."""
    magenta = ((images[:, 0] > 0.6) & (images[:, 1] < -0.6) & (images[:, 2] > 0.6)).float()
    return -magenta.mean(dim=(1, 2))
