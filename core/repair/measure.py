"""Per-image measurements of one split of samples, and the bootstrap statistics over them.

Why per image: a score such as a Fréchet distance is a statistic of a whole sample set;
keeping the per-image values (features, critic scores) lets a bootstrap resample images
without generating or extracting anything again, and lets two measurements of the same
latents (with and without units) be compared pair by pair.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from gdx.errors import RepairError
from gdx.interfaces import Generator, Segmenter
from gdx.intervention import intervene
from gdx.sampling import label_fractions, latent_batches, layer_output, segment_images


def gain(before: float, after: float, higher: bool) -> float:
    return after - before if higher else before - after


def check_per_sample(metric: Any, what: str) -> None:
    if not (callable(getattr(metric, "sample_values", None)) and callable(getattr(metric, "score_values", None))):
        raise RepairError(
            f"{what} {type(metric).__name__} gives no per-image values: it needs sample_values(images) -> N x D "
            "and score_values(values) -> float (as FrechetDistance and RealismScore have), so that the "
            "held-out interval can resample images"
        )


def with_reference(metric: Any, real: torch.Tensor | Iterable[torch.Tensor]) -> Any:
    if not hasattr(metric, "set_reference"):
        raise RepairError(f"{type(metric).__name__} takes no real images; drop real= or use FrechetDistance")
    fresh = metric.fresh() if hasattr(metric, "fresh") else copy.copy(metric)
    fresh.set_reference(real)
    return fresh


class Split:
    """The latents of one split and the per-image values of each metric, with any units ablated.

    Why the cache: a search measures the same latents hundreds of times with different
    units off. When the generator's module is a chain of top-level children (ProGAN, the
    scene models) and ``layer`` is one of them, the layer's output is computed once and
    only the rest of the chain runs per measurement (checked against ``generate`` on the
    first batch; any other generator runs whole, with :func:`intervene`).
    """

    max_cache_bytes = 2**30

    def __init__(self, generator: Generator, layer: str, metrics: Sequence[Any], n: int, seed: int,
                 batch_size: int | None, segmenter: Segmenter | None = None) -> None:
        self.generator, self.layer, self.metrics, self.segmenter = generator, layer, list(metrics), segmenter
        self.latents = list(latent_batches(generator, n, seed=seed, batch_size=batch_size))
        self.labels: dict[tuple[int, ...], torch.Tensor] = {}
        self.suffix = chain_after(generator, layer) if layer else None
        self.cache: list[torch.Tensor] = []
        if self.suffix is not None:
            self._fill_cache()

    @torch.no_grad()
    def _fill_cache(self) -> None:
        first = layer_output(self.generator, self.layer, self.latents[0])
        if first.numel() * first.element_size() * len(self.latents) > self.max_cache_bytes or self.suffix is None:
            self.suffix = None
            return
        try:
            same = torch.allclose(self.suffix(first), self.generator.generate(self.latents[0]), atol=1e-5, rtol=1e-4)
        except (RuntimeError, TypeError, ValueError):
            same = False
        if not same:
            self.suffix = None
            return
        self.cache = [first] + [layer_output(self.generator, self.layer, z) for z in self.latents[1:]]

    @torch.no_grad()
    def _images(self, i: int, units: Sequence[int]) -> torch.Tensor:
        if self.suffix is not None:
            h = self.cache[i]
            if units:
                h = h.clone()
                h[:, list(units)] = 0
            return self.suffix(h)
        if units:
            with intervene(self.generator, self.layer, list(units), value=0.0):
                return self.generator.generate(self.latents[i])
        return self.generator.generate(self.latents[i])

    @torch.no_grad()
    def values(self, units: Sequence[int], *, labels: bool = True) -> list[torch.Tensor]:
        """One N x D tensor per metric; with a segmenter and ``labels``, the label distribution goes to ``self.labels``."""
        parts: list[list[torch.Tensor]] = [[] for _ in self.metrics]
        fractions = []
        for i in range(len(self.latents)):
            images = self._images(i, units)
            for part, metric in zip(parts, self.metrics):
                part.append(metric.sample_values(images))
            if self.segmenter is not None and labels:
                seg = segment_images(self.segmenter, images)
                fractions.append(label_fractions(seg, len(self.segmenter.labels)).sum(0))
        if fractions:
            total = torch.stack(fractions).sum(0)
            self.labels[tuple(units)] = total / total.sum()
        return [torch.cat(p) for p in parts]


def chain_after(generator: Generator, layer: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``h -> image`` running the top-level children after ``layer``, when the module is such a chain."""
    module = generator.module
    names = [n for n, _ in module.named_children()]
    if layer not in names or not isinstance(module, nn.Sequential):
        return None
    rest = [m for n, m in module.named_children()][names.index(layer) + 1:]

    def run(h: torch.Tensor) -> torch.Tensor:
        for m in rest:
            h = m(h)
        return h

    return run


def bootstrap_interval(
    score: Callable[[torch.Tensor], float], before: torch.Tensor, after: torch.Tensor, *, higher: bool,
    draws: int = 1000, level: float = 0.95, seed: int = 0,
) -> tuple[float, float, float]:
    """Paired bootstrap over images of the relative improvement ``gain / |score(before)|``.

    ``before``/``after``: per-image values of the same latents without/with the edit
    (row i of each is one latent), resampled with the same indices. Returns (standard
    deviation, low, high) of the ``level`` percentile interval.
    """
    if before.shape[0] != after.shape[0]:
        raise RepairError(f"paired values need the same samples: {before.shape[0]} vs {after.shape[0]}")
    rng = torch.Generator().manual_seed(seed)
    n = before.shape[0]
    rel = []
    for _ in range(draws):
        idx = torch.randint(n, (n,), generator=rng)
        b = score(before[idx])
        rel.append(gain(b, score(after[idx]), higher) / abs(b) if b else 0.0)
    t = torch.tensor(rel, dtype=torch.float64)
    tail = (1 - level) / 2
    return float(t.std()), float(t.quantile(tail)), float(t.quantile(1 - tail))


def bootstrap_sd(score: Callable[[torch.Tensor], float], values: torch.Tensor, draws: int, seed: int) -> float:
    rng = torch.Generator().manual_seed(seed)
    n = values.shape[0]
    return float(torch.tensor([score(values[torch.randint(n, (n,), generator=rng)]) for _ in range(draws)]).std())


def paired_sd(score: Callable[[torch.Tensor], float], a: torch.Tensor, b: torch.Tensor, higher: bool,
               seed: int, draws: int = 200) -> float:
    """Bootstrap standard deviation of the gain ``score(b) - score(a)`` (paired rows)."""
    rng = torch.Generator().manual_seed(seed)
    n = a.shape[0]
    gains = []
    for _ in range(draws):
        idx = torch.randint(n, (n,), generator=rng)
        gains.append(gain(score(a[idx]), score(b[idx]), higher))
    return float(torch.tensor(gains, dtype=torch.float64).std())


@torch.no_grad()
def real_label_distribution(segmenter: Segmenter, real: list[torch.Tensor] | None) -> torch.Tensor:
    if not real:
        raise RepairError("the label check (segmenter=) needs real images: pass real= (a tensor or batches)")
    total = torch.zeros(len(segmenter.labels), dtype=torch.float64)
    for batch in real:
        total += label_fractions(segment_images(segmenter, batch), len(segmenter.labels)).sum(0)
    return total / total.sum()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return float(0.5 * (p.double() - q.double()).abs().sum())
