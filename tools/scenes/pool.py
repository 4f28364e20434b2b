"""A fixed, seeded pool of rendered scenes kept in memory as uint8 for training loops.

Why: rendering costs a few milliseconds per scene, a training step only needs a batch, and
a fixed pool makes a run reproducible and resumable (batches are drawn by step number).
Pool scenes use render seeds from :data:`TRAIN_SEED_BASE` upwards, which tests and
evaluations never use (they draw their held-out scenes from small seeds).
"""

from __future__ import annotations

import torch

from gdx.scenes.render import render_scenes

TRAIN_SEED_BASE = 10_000_000
_CHUNK = 64


class ScenePool:
    """``n`` scenes rendered from ``seed``: images (uint8) and labels (uint8) in memory."""

    def __init__(self, n: int, *, seed: int, size: int = 64) -> None:
        chunks = (n + _CHUNK - 1) // _CHUNK
        images, labels = [], []
        for i in range(chunks):
            batch = render_scenes(_CHUNK, seed=TRAIN_SEED_BASE + seed * 100_000 + i, size=size)
            images.append(((batch.images + 1) * 127.5).round().to(torch.uint8))
            labels.append(batch.labels.to(torch.uint8))
        self.images = torch.cat(images)[:n]
        self.labels = torch.cat(labels)[:n]

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, batch: int, rng: torch.Generator, *, with_labels: bool = False):
        """A random batch: images N x 3 x S x S float in [-1, 1] (and labels N x S x S long)."""
        idx = torch.randint(len(self), (batch,), generator=rng)
        images = self.images[idx].float() / 127.5 - 1
        if with_labels:
            return images, self.labels[idx].long()
        return images
