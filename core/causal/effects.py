"""Measure what ablating or inserting a set of units does to a concept (docs/method.md, "Intervention").

:class:`EffectRunner` holds fixed latents (the dissection recipe) and the cached
unedited pass; :func:`causal_effect` measures one unit set, :func:`cumulative_effect`
the top-n units of a ranking for n = 1..n_max.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from gdx.causal.results import CausalEffect, CumulativeCurve, UnitRanking, ordered_units
from gdx.errors import InterventionError
from gdx.interfaces import Generator, Segmenter
from gdx.intervention import intervene
from gdx.sampling import concept_index, concept_mask, label_fractions, latent_batches, segment_images
from gdx.tracing import Trace
from gdx.values import InsertionMean, stack_steps, step_layers

#: Concepts covering less than this fraction of pixels get no side-effect figure.
MIN_SIDE_COVERAGE = 1e-3


class EffectRunner:
    """Measures pixel fractions of every label under edits, on fixed latents.

    The baseline (no edit) is computed once and cached, together with the
    concept's insertion values, so ranking many unit sets costs one edited pass each.
    """

    def __init__(
        self,
        generator: Generator,
        segmenter: Segmenter,
        layer: str,
        concept: str | int,
        *,
        samples: int = 200,
        seed: int = 0,
        batch_size: int | None = None,
        value: torch.Tensor | float | None = None,
    ) -> None:
        self.generator = generator
        self.segmenter = segmenter
        self.layer = layer
        self.index = concept_index(segmenter, concept)
        self.concept = list(segmenter.labels)[self.index]
        self.n_labels = len(segmenter.labels)
        self.samples = samples
        self.seed = seed
        self.batch_size = batch_size
        self._value = None if value is None else torch.as_tensor(value, dtype=torch.float32)
        self._baseline: torch.Tensor | None = None
        self.n_units: int | None = None
        self.grid: tuple[int, int] | None = None

    def batches(self) -> Iterator[torch.Tensor]:
        """The latents, batch by batch (the same every call)."""
        return latent_batches(self.generator, self.samples, seed=self.seed, batch_size=self.batch_size)

    @torch.no_grad()
    def baseline(self) -> torch.Tensor:
        """Pixel fractions N x L of the unedited samples (and the insertion values, in the same pass)."""
        if self._baseline is None:
            fractions = []
            steps = step_layers(self.layer)  # a step window's insertion values are per step
            means = [InsertionMean() for _ in steps]
            for z in self.batches():
                with Trace(self.generator, steps) as tr:
                    images = self.generator.generate(z)
                r = tr[steps[0]]
                self.n_units, self.grid = int(r.shape[1]), (int(r.shape[2]), int(r.shape[3]))
                seg = segment_images(self.segmenter, images)
                fractions.append(label_fractions(seg, self.n_labels).cpu())
                mask = concept_mask(seg, self.index)
                for mean, name in zip(means, steps):
                    mean.add(tr[name], mask)
            self._baseline = torch.cat(fractions)
            if self._value is None:
                self._value = stack_steps(self.layer, [m.value() for m in means])
        return self._baseline

    @property
    def value(self) -> torch.Tensor:
        """Insertion values (U floats, or a scalar; steps x U at a step window) for the concept."""
        self.baseline()
        if self._value is None:
            raise InterventionError(
                f"concept {self.concept!r} never appears in {self.samples} samples (seed {self.seed}); its "
                "insertion values are undefined. Use more samples or pass value= explicitly."
            )
        return self._value

    @torch.no_grad()
    def under(self, units: Sequence[int], *, insert: bool) -> torch.Tensor:
        """Pixel fractions N x L with ``units`` ablated (or set to the insertion value) everywhere."""
        value = self.value if insert else 0.0
        out = []
        for z in self.batches():
            with intervene(self.generator, self.layer, list(units), value=value):
                images = self.generator.generate(z)
            out.append(label_fractions(segment_images(self.segmenter, images), self.n_labels).cpu())
        return torch.cat(out)

    def _side_effects(self, before: torch.Tensor, ablated: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
        """Relative and absolute change of every other concept covering at least MIN_SIDE_COVERAGE."""
        side, side_abs = {}, {}
        for j, name in enumerate(self.segmenter.labels):
            if j == self.index or float(before[:, j].mean()) < MIN_SIDE_COVERAGE:
                continue
            side[name] = float(ablated[:, j].sum() / before[:, j].sum() - 1.0)
            side_abs[name] = float((ablated[:, j] - before[:, j]).mean())
        return side, side_abs

    def effect(self, units: Sequence[int], *, insert: bool = True) -> CausalEffect:
        """Ablate ``units`` (and, with ``insert``, set them to the insertion values) and measure."""
        before = self.baseline()
        ablated = self.under(units, insert=False)
        c = self.index
        contains = before[:, c] > 0
        total_before = float(before[contains, c].sum())
        removed = 1.0 - float(ablated[contains, c].sum()) / total_before if total_before > 0 else float("nan")
        inserted = added = ace = None
        if insert:
            ins = self.under(units, insert=True)
            inserted = ins[:, c].float()
            added = float((ins[:, c] - before[:, c]).mean())
            ace = float(ins[:, c].mean() - ablated[:, c].mean())
        side, side_abs = self._side_effects(before, ablated)
        value = self._value
        return CausalEffect(
            layer=self.layer,
            units=[int(u) for u in units],
            concept=self.concept,
            samples=self.samples,
            seed=self.seed,
            removed=removed,
            added=added,
            ace=ace,
            before=before[:, c].float(),
            ablated=ablated[:, c].float(),
            inserted=inserted,
            contains=contains,
            side_effects=side,
            side_effects_abs=side_abs,
            insertion_value=None if (value is None or not insert) else value.reshape(-1).tolist(),
        )


def causal_effect(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    units: Sequence[int],
    concept: str | int,
    *,
    samples: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
    value: torch.Tensor | float | None = None,
    insert: bool = True,
) -> CausalEffect:
    """Ablate ``units`` of ``layer`` everywhere, then insert them, and measure ``concept``.

    ``value`` is the insertion value (a number or one per unit of the layer); by
    default the insertion constants of :func:`gdx.insertion_values`, computed from
    the same ``samples`` samples. ``insert=False`` skips the insertion pass
    (``added`` and ``ace`` are then None).

    >>> eff = gdx.causal_effect(gen, seg, "layer4", [3, 17, 41], "tree", samples=500)
    >>> print(f"{eff.removed:.0%} of tree pixels removed, ACE {eff.ace:+.3f}")
    """
    runner = EffectRunner(
        generator, segmenter, layer, concept, samples=samples, seed=seed, batch_size=batch_size, value=value
    )
    return runner.effect(units, insert=insert)


def cumulative_effect(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    ranking: UnitRanking | Sequence[int],
    concept: str | int,
    *,
    n_max: int = 20,
    samples: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
    insert: bool = True,
    value: torch.Tensor | float | None = None,
) -> CumulativeCurve:
    """Removal / addition / ACE of the top-n units for n = 1..n_max (the paper's curves).

    ``ranking`` is a :class:`UnitRanking` or a list of units, best first.
    """
    units = ordered_units(ranking, n_max)
    runner = EffectRunner(
        generator, segmenter, layer, concept, samples=samples, seed=seed, batch_size=batch_size, value=value
    )
    removed, added, ace = [], [], []
    for n in range(1, len(units) + 1):
        eff = runner.effect(units[:n], insert=insert)
        removed.append(eff.removed)
        if insert:
            added.append(float(eff.added or 0.0))
            ace.append(float(eff.ace or 0.0))
    return CumulativeCurve(
        layer=layer,
        concept=runner.concept,
        units=units,
        n=list(range(1, len(units) + 1)),
        removed=removed,
        added=added if insert else None,
        ace=ace if insert else None,
        samples=samples,
        seed=seed,
    )
