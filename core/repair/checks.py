"""What a person and a sample-size choice need besides the search: score spread, per-unit evidence.

* :func:`score_spread`: the run-to-run spread of a quality score at several sample
  sizes, to choose ``samples``/``held_out`` of :func:`gdx.find_artifact_units` so that
  the gains it compares are above the noise.
* :func:`unit_evidence`: for each candidate unit, the samples where it fires most, its
  activation map there, and the samples with the unit off — the paper's artifact units
  were checked by eye, and so should these be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from gdx.errors import RepairError
from gdx.interfaces import Generator
from gdx.intervention import intervene
from gdx.repair.measure import Split, check_per_sample, with_reference
from gdx.results import JsonResult
from gdx.sampling import latent_batches, layer_output


@dataclasses.dataclass
class ScoreSpread(JsonResult):
    """Run-to-run spread of a quality score: ``means[i]``/``sds[i]`` over ``draws`` disjoint seeds at ``sizes[i]`` samples.

    Why: a search that compares scores differing by less than their spread picks noise.
    Choose ``samples`` so that ``sd`` is well below the gains that matter (e.g. a tenth
    of the 10% improvement asked of a repair), and expect the mean to fall with size (a
    Fréchet distance is biased upwards at small sizes).
    """

    metric: str
    sizes: list[int]
    means: list[float]
    sds: list[float]
    draws: int
    seed: int

    _kind = "score_spread"

    def relative_sd(self) -> list[float]:
        """``sds[i] / means[i]``: the spread as a fraction of the score."""
        return [sd / abs(m) if m else float("inf") for sd, m in zip(self.sds, self.means)]


def score_spread(generator: Generator, metric: Any, sizes: Sequence[int], *, draws: int = 4, seed: int = 100,
                 real: torch.Tensor | Iterable[torch.Tensor] | None = None,
                 batch_size: int | None = None) -> ScoreSpread:
    """Measure ``metric`` on ``draws`` independent sample sets (seeds ``seed``, ``seed + 1``...) at each size.

    The images of each seed are generated once, at the largest size; the smaller sizes
    use their leading samples (independent draws all the same).
    """
    if draws < 2:
        raise RepairError(f"a spread needs at least 2 draws; got {draws}")
    if not sizes or min(sizes) < 2:
        raise RepairError(f"sizes must be at least 2 samples each; got {list(sizes)}")
    check_per_sample(metric, "metric")
    m = with_reference(metric, [real] if isinstance(real, torch.Tensor) else list(real)) if real is not None else metric
    values = [Split(generator, "", [m], max(sizes), seed + d, batch_size).values([])[0] for d in range(draws)]
    means, sds = [], []
    for size in sizes:
        t = torch.tensor([m.score_values(v[:size]) for v in values], dtype=torch.float64)
        means.append(float(t.mean()))
        sds.append(float(t.std()))
    return ScoreSpread(metric=getattr(m, "name", type(m).__name__), sizes=[int(s) for s in sizes], means=means,
                       sds=sds, draws=draws, seed=seed)


@dataclasses.dataclass
class UnitEvidence:
    """Where one unit fires and what ablating it changes, on the samples where it fires most.

    ``images``/``ablated``: K x 3 x H x W (before/after switching the unit off);
    ``activation``: K x h x w, the unit's map on those samples; ``indices``: which of
    the ``samples`` latents of ``seed`` they are; ``peak``: their spatial maxima.
    """

    unit: int
    indices: list[int]
    peak: list[float]
    images: torch.Tensor
    activation: torch.Tensor
    ablated: torch.Tensor


@torch.no_grad()
def unit_evidence(generator: Generator, layer: str, units: Sequence[int], *, samples: int = 200, seed: int = 0,
                  worst: int = 4, batch_size: int | None = None) -> list[UnitEvidence]:
    """For each unit, the ``worst`` of ``samples`` samples where it fires most, before and after ablating it.

    What a person checks before trusting an artifact unit (the paper's units were
    checked by hand): does it fire on the streak or blotch, and does the blotch go away
    when it is off, leaving the scene intact?
    """
    if worst < 1:
        raise RepairError(f"worst must be at least 1, got {worst}")
    z = torch.cat(list(latent_batches(generator, samples, seed=seed, batch_size=batch_size)))
    acts = torch.cat([layer_output(generator, layer, zb) for zb in z.split(batch_size or 100)])
    out = []
    for u in units:
        peak = acts[:, u].flatten(1).amax(1)
        top = peak.argsort(descending=True)[:worst]
        zt = z[top]
        images = generator.generate(zt)
        with intervene(generator, layer, [int(u)], value=0.0):
            ablated = generator.generate(zt)
        out.append(UnitEvidence(int(u), [int(i) for i in top], [float(peak[i]) for i in top], images.cpu(),
                                acts[top, u].cpu(), ablated.cpu()))
    return out
