"""Where in an image a concept's units can add the concept (docs/method.md, "ACE and removal": location maps)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gdx.causal.results import LocationMap, UnitRanking, ordered_units
from gdx.interfaces import Generator, Segmenter
from gdx.intervention import intervene
from gdx.sampling import concept_index, concept_mask, segment_images
from gdx.tracing import Trace
from gdx.values import insertion_values


def _window(cell: int, radius: int, grid: tuple[int, int], size: tuple[int, int]) -> tuple[slice, slice]:
    """The pixels (of an image of ``size``) of feature cell ``cell`` grown by ``radius`` cells each side."""
    (h, w), (H, W) = grid, size
    i, j = divmod(cell, w)
    y0, y1 = ((i - radius) * H) // h, ((i + 1 + radius) * H + h - 1) // h
    x0, x1 = ((j - radius) * W) // w, ((j + 1 + radius) * W + w - 1) // w
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(H, y1), min(W, x1)
    return slice(y0, y1), slice(x0, x1)


@torch.no_grad()
def location_map(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    units: Sequence[int] | UnitRanking,
    concept: str | int,
    *,
    sample: int = 0,
    seed: int = 0,
    value: torch.Tensor | float | None = None,
    value_samples: int = 200,
    radius: int = 1,
    batch_size: int | None = None,
    n_top: int = 20,
) -> LocationMap:
    """Insert ``concept``'s units at each feature cell of one sample and map the gain.

    Sample ``sample`` of ``seed`` (the dissection recipe). ``value`` defaults to the
    insertion values computed from ``value_samples`` samples of ``seed``. Cells are
    edited one at a time, many cells per batch. Shows where the concept can go:
    a door appears on a wall, not in the sky.
    """
    units = ordered_units(units, n_top) if isinstance(units, UnitRanking) else [int(u) for u in units]
    index = concept_index(segmenter, concept)
    if value is None:
        value = insertion_values(generator, segmenter, layer, index, samples=value_samples, seed=seed)
    z = generator.sample_latents(sample + 1, seed=seed)[sample : sample + 1].to(generator.device)
    with Trace(generator, layer) as tr:
        image = generator.generate(z)
    h, w = tr[layer].shape[-2:]
    base = concept_mask(segment_images(segmenter, image), index).float()
    H, W = base.shape[-2:]
    cells = h * w
    gain = torch.zeros(cells)
    bs = batch_size or 16
    for start in range(0, cells, bs):
        idx = torch.arange(start, min(cells, start + bs))
        region = torch.zeros(idx.numel(), h * w)
        region[torch.arange(idx.numel()), idx] = 1.0
        region = region.view(-1, h, w)
        with intervene(generator, layer, units, value=value, region=region):
            edited = generator.generate(z.expand(idx.numel(), *z.shape[1:]))
        mask = concept_mask(segment_images(segmenter, edited), index).float()
        for b, cell in enumerate(idx.tolist()):
            window = _window(cell, radius, (h, w), (H, W))
            gain[cell] = float(mask[b][window].mean() - base[0][window].mean())
    return LocationMap(
        layer=layer,
        concept=list(segmenter.labels)[index],
        units=units,
        sample=sample,
        seed=seed,
        radius=radius,
        gain=gain.view(h, w),
        image=image[0].detach().cpu().float(),
    )
