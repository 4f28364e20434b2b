"""Rank a layer's units for a concept without optimisation: by IoU, by single-unit ACE, or at random.

The learned ranking (alpha) is :func:`gdx.causal.alpha.optimize_units`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Union

import torch

from gdx.causal.effects import EffectRunner
from gdx.causal.results import UnitRanking
from gdx.errors import InterventionError
from gdx.interfaces import Generator, Segmenter
from gdx.results import Dissection

#: A units x labels IoU table: a Dissection (its ``.iou`` and ``.labels``), or the
#: table itself as a tensor (with the labels passed separately), or one U-vector.
IouTable = Union[Dissection, torch.Tensor]


def _iou_column(iou: IouTable, concept: str | int, labels: Sequence[str] | None) -> tuple[torch.Tensor, str]:
    """``concept``'s column of the IoU table (a 1-D table is the column), and the concept's name."""
    table = getattr(iou, "iou", iou)
    labels = list(getattr(iou, "labels", labels) or [])
    table = torch.as_tensor(table, dtype=torch.float32)
    if table.dim() == 1:
        return table, str(concept)
    if isinstance(concept, str):
        if concept not in labels:
            raise InterventionError(f"no label {concept!r} in the IoU table's labels ({', '.join(labels[:40])})")
        col = labels.index(concept)
    else:
        col = int(concept)
    return table[:, col], (labels[col] if labels else str(concept))


def rank_by_iou(
    iou: IouTable, concept: str | int, *, labels: Sequence[str] | None = None, layer: str = ""
) -> UnitRanking:
    """Rank units by IoU with ``concept``.

    ``iou`` is a :class:`gdx.Dissection` (its ``.iou`` units x labels and ``.labels``)
    or a plain units x labels tensor with ``labels``.
    """
    scores, name = _iou_column(iou, concept, labels)
    return UnitRanking(layer=layer or getattr(iou, "layer", ""), concept=name, method="iou", scores=scores)


def rank_by_ace(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    concept: str | int,
    *,
    units: Sequence[int] | None = None,
    samples: int = 100,
    seed: int = 0,
    batch_size: int | None = None,
) -> UnitRanking:
    """Rank units by their single-unit ACE for ``concept`` (one ablation + one insertion pass per unit).

    ``units`` restricts the candidates (others score -inf).
    """
    runner = EffectRunner(generator, segmenter, layer, concept, samples=samples, seed=seed, batch_size=batch_size)
    runner.baseline()
    n_units = int(runner.n_units or 0)
    scores = torch.full((n_units,), float("-inf"))
    for u in units if units is not None else range(n_units):
        eff = runner.effect([int(u)], insert=True)
        scores[int(u)] = float(eff.ace if eff.ace is not None else 0.0)
    return UnitRanking(layer=layer, concept=runner.concept, method="ace", scores=scores)


def random_units(n_units: int, n: int, *, seed: int = 1) -> list[int]:
    """``n`` distinct random units of ``n_units`` (a seeded control set)."""
    return sorted(random.Random(seed).sample(range(n_units), min(n, n_units)))
