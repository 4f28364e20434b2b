"""Keep an inverted photo's concepts in the generator's own units, so that switching them off works.

An inversion's optimised features reproduce a photo, but nothing makes them draw the
photo's tree *with the GAN's tree units*: measured on the scene GAN, the 12 tree units of
the paint layer fire at a third of their usual level inside a photo's trees and the tree
is drawn by other channels, so switching the tree units off removed ~20% of a photo's
tree (68% on the GAN's own samples). GANPaint's erase brush is exactly that edit.

A :class:`ConceptPrior` closes the gap with one more term in the feature stage of
:func:`gdx.invert`. For each concept of the paint menu it knows the units that draw it on
a layer (the dissection's) and how strongly each fires where the generator itself draws
that concept (``levels``: the mean activation over feature cells the segmenter labels
with it, on the generator's own samples). Where the segmenter finds the concept in the
photo, the term penalises each of those units for firing *below* its level:

    weight * mean over (cell, unit) of relu(level[unit] - activation[unit, cell]) ** 2

over the cells (at least ``coverage`` of their pixels the concept) of every concept found.
It never pushes a unit down and never touches other channels; the pixel loss decides the
rest. docs/paint.md ("Painting a photo") has the measurements: the erase brush then
removes most of a photo's tree, with the same reconstruction quality, while switching off
as many random units removes a few percent.

>>> prior = ConceptPrior.measure(gen, seg, "layer6", {"tree": (115, 11, 60)})
>>> inv = gdx.invert(gen, photos, layer="layer5", prior=prior)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from gdx.errors import InversionError
from gdx.interfaces import Generator, Segmenter
from gdx.sampling import concept_mask, segment_images
from gdx.tracing import Trace


@dataclasses.dataclass(frozen=True)
class ConceptPrior:
    """Per concept, units of ``layer`` and the level each fires at where the generator draws it.

    ``units[c]`` are unit indices of ``layer``; ``levels[c]`` (one per unit) their mean
    activation on cells that are at least ``coverage`` concept ``c`` in the generator's own
    samples (by ``segmenter``). ``weight`` scales the term in :func:`gdx.invert`.
    """

    layer: str
    segmenter: Segmenter
    units: Mapping[str, tuple[int, ...]]
    levels: Mapping[str, torch.Tensor]
    weight: float = 0.5
    coverage: float = 0.5

    def __post_init__(self) -> None:
        if not self.weight >= 0 or self.weight == float("inf"):
            raise InversionError(f"the concept prior's weight must be a finite number >= 0, got {self.weight!r}")
        if not 0 < self.coverage <= 1:
            raise InversionError(f"coverage must be in (0, 1], got {self.coverage!r}")
        labels = list(self.segmenter.labels)
        for name, units in self.units.items():
            if name not in labels:
                raise InversionError(f"concept {name!r} is not a label of segmenter {self.segmenter.name!r} "
                                     f"(it has {', '.join(labels[:8])}, ...): name concepts by the segmenter's labels")
            if len(self.levels.get(name, ())) != len(units):
                raise InversionError(f"concept {name!r}: {len(units)} units but "
                                     f"{len(self.levels.get(name, ()))} levels; measure them with ConceptPrior.measure")

    @classmethod
    def measure(cls, generator: Generator, segmenter: Segmenter, layer: str,
                units: Mapping[str, Sequence[int]], *, samples: int = 200, seed: int = 0, batch_size: int = 50,
                weight: float = 0.5, coverage: float = 0.5, min_cells: int = 10) -> ConceptPrior:
        """Measure each unit's level on ``samples`` of the generator's own images (latent seed ``seed``).

        Concepts drawn on fewer than ``min_cells`` cells of those samples are left out (no
        level to trust); so are concepts without units.
        """
        if samples < 1:
            raise InversionError(f"samples must be >= 1, got {samples}")
        labels = list(segmenter.labels)
        wanted = {c: tuple(int(u) for u in us) for c, us in units.items() if len(us)}
        for c in wanted:
            if c not in labels:
                raise InversionError(f"concept {c!r} is not a label of segmenter {segmenter.name!r}: name concepts "
                                     "by the segmenter's labels")
        sums = {c: torch.zeros(len(u), dtype=torch.float64) for c, u in wanted.items()}
        counts = dict.fromkeys(wanted, 0)
        rows = generator.latent_rows(samples, seed=seed)
        for start in range(0, samples, batch_size):
            z = rows.rows(start, min(samples, start + batch_size)).to(generator.device)
            with torch.no_grad(), Trace(generator, layer) as tr:
                images = generator.generate(z)
            acts = tr[layer].float()
            if acts.dim() != 4:
                raise InversionError(f"layer {layer!r} outputs shape {tuple(acts.shape)}; the concept prior needs "
                                     "an N x U x h x w layer")
            with torch.no_grad():
                found = segment_images(segmenter, images)
            for c, us in wanted.items():
                cells = concept_cells(found, labels.index(c), acts.shape[-2:], coverage)  # N x h x w
                if bool(cells.any()):
                    picked = acts[:, list(us)].permute(0, 2, 3, 1)[cells.to(acts.device)]  # cells x units
                    sums[c] += picked.double().sum(0).cpu()
                    counts[c] += int(picked.shape[0])
        kept = [c for c in wanted if counts[c] >= min_cells]
        return cls(layer, segmenter, {c: wanted[c] for c in kept},
                   {c: (sums[c] / counts[c]).float() for c in kept}, float(weight), float(coverage))

    def targets(self, photos: torch.Tensor, grid: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For each concept found in ``photos``: (its units, their levels, N x h x w cells of it)."""
        with torch.no_grad():
            found = segment_images(self.segmenter, photos)
        labels = list(self.segmenter.labels)
        out = []
        for c, us in self.units.items():
            cells = concept_cells(found, labels.index(c), grid, self.coverage).to(photos.device)
            if bool(cells.any()):
                out.append((torch.tensor(us, device=photos.device), self.levels[c].to(photos.device), cells))
        return out

    @staticmethod
    def loss(activations: torch.Tensor, targets: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Per-image term (N): mean over every (cell, unit) of the concepts found of relu(level - activation)^2."""
        n = activations.shape[0]
        total = activations.new_zeros(n)
        count = activations.new_zeros(n)
        for units, levels, cells in targets:
            gap = F.relu(levels[None, :, None, None] - activations[:, units]) ** 2  # N x k x h x w
            mask = cells[:, None].to(gap.dtype)
            total = total + (gap * mask).sum((1, 2, 3))
            count = count + mask.sum((1, 2, 3)) * len(units)
        return total / count.clamp_min(1)

    def describe(self) -> str:
        return f"{self.layer}: {len(self.units)} concepts, weight {self.weight:g}"


def concept_cells(labels: torch.Tensor, label: int, grid: Sequence[int], coverage: float) -> torch.Tensor:
    """N x h x w: the cells of ``grid`` that are at least ``coverage`` label ``label`` (label map N x [K x] H x W)."""
    hit = concept_mask(labels, label)
    share = F.adaptive_avg_pool2d(hit.float()[:, None], (int(grid[0]), int(grid[1])))[:, 0]
    return share >= coverage
