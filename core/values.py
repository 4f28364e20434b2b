"""Per-unit values for edits: each unit's activation quantile, and its insertion constant.

GANPaint's "draw" value is a unit's 0.99 quantile; the paper's insertion constant is
its mean activation where a concept is present. Both are statistics over samples of
the dissection recipe (:mod:`gdx.sampling`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gdx.errors import InterventionError
from gdx.interfaces import Generator, Segmenter
from gdx.sampling import concept_index, concept_mask, latent_batches, layer_output, segment_images
from gdx.tracing import LayerAddress, Trace

#: Cap on the activations kept per unit when computing exact quantiles.
MAX_QUANTILE_VALUES = 2_000_000


def _quantile_rows(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q`` quantile with linear interpolation (torch.quantile refuses > 16M elements)."""
    ordered, _ = values.sort(dim=1)
    pos = q * (ordered.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, ordered.shape[1] - 1)
    frac = pos - lo
    return ordered[:, lo] * (1 - frac) + ordered[:, hi] * frac


def step_layers(layer: str) -> list[str]:
    """The addresses read to take statistics at ``layer``: each step of a window, else the layer."""
    window = LayerAddress.parse(layer)
    return [window.at(k).name for k in window.calls()] if window.is_window else [layer]


def stack_steps(layer: str, values: list[torch.Tensor | None]) -> torch.Tensor | None:
    """Per-step statistics as one value: U floats, or steps x U at a window (None if any is missing)."""
    if any(v is None for v in values):
        return None
    rows = [v for v in values if v is not None]
    return torch.stack(rows) if LayerAddress.parse(layer).is_window else rows[0]


@torch.no_grad()
def unit_quantiles(
    generator: Generator,
    layer: str,
    q: float = 0.99,
    *,
    samples: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Each unit's ``q`` quantile over all feature cells of ``samples`` samples (U floats).

    GANPaint's "draw" value is the 0.99 quantile. The quantile is exact over the
    values kept; when a unit would exceed ``MAX_QUANTILE_VALUES`` values, every cell
    of a deterministic stride is kept instead. At a step window (``blk@A-B``) the
    quantiles are taken at each step: steps x U, one row per step (a unit's activations
    differ by step), which an edit at that window applies step by step.
    """
    if not 0.0 <= q <= 1.0:
        raise InterventionError(f"quantile q must be in [0, 1], got {q}")
    window = LayerAddress.parse(layer)
    if window.is_window:
        return torch.stack([unit_quantiles(generator, window.at(k).name, q, samples=samples, seed=seed,
                                           batch_size=batch_size) for k in window.calls()])
    chunks: list[torch.Tensor] = []
    stride = 1
    for z in latent_batches(generator, samples, seed=seed, batch_size=batch_size):
        r = layer_output(generator, layer, z).float()
        per_unit = r.transpose(0, 1).reshape(r.shape[1], -1)
        if stride == 1:
            total = per_unit.shape[1] * samples / max(1, r.shape[0])
            stride = max(1, int(total // MAX_QUANTILE_VALUES) + (total % MAX_QUANTILE_VALUES > 0))
        chunks.append(per_unit[:, ::stride].cpu())
    return _quantile_rows(torch.cat(chunks, dim=1), q)


class InsertionMean:
    """The running, concept-weighted mean of each unit's activation (the insertion constant).

    Each feature cell counts with the fraction of its pixels the concept covers (the
    concept mask average-pooled to the layer's grid), accumulated in float64. The one
    implementation behind :func:`insertion_values` and the causal-effect baseline.
    """

    def __init__(self) -> None:
        self.num: torch.Tensor | None = None
        self.den = 0.0

    def add(self, activations: torch.Tensor, mask: torch.Tensor) -> None:
        """Fold in one batch: activations N x U x h x w and the concept's mask N x H x W (bool)."""
        r = activations.double()
        w = F.adaptive_avg_pool2d(mask.double()[:, None], (int(r.shape[-2]), int(r.shape[-1])))
        contrib = (r * w).sum(dim=(0, 2, 3)).cpu()
        self.num = contrib if self.num is None else self.num + contrib
        self.den += float(w.sum())

    def value(self) -> torch.Tensor | None:
        """U floats, or None while the concept has not appeared."""
        if self.num is None or self.den <= 0:
            return None
        return (self.num / self.den).float()


@torch.no_grad()
def insertion_values(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    concept: str | int,
    *,
    samples: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Each unit's insertion constant k_u for ``concept`` (U floats; docs/method.md, "Intervention").

    k_u is the mean of unit u's activation over the feature cells where the concept
    is present, each cell weighted by the fraction of its pixels the concept covers
    (the segmentation average-pooled to the layer's grid). This is the reference's
    default ("weighted mean present feature"). At a step window (``blk@A-B``): steps x U,
    one row per step, from the same passes.
    """
    index = concept_index(segmenter, concept)
    steps = step_layers(layer)
    means = [InsertionMean() for _ in steps]
    for z in latent_batches(generator, samples, seed=seed, batch_size=batch_size):
        with Trace(generator, steps) as tr:
            images = generator.generate(z)
        mask = concept_mask(segment_images(segmenter, images), index)
        for mean, name in zip(means, steps):
            mean.add(tr[name], mask)
    value = stack_steps(layer, [m.value() for m in means])
    if value is None:
        raise InterventionError(
            f"concept {segmenter.labels[index]!r} never appears in {samples} samples (seed {seed}): "
            "its insertion values are undefined. Use more samples, or pass value= explicitly."
        )
    return value
