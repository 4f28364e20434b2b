"""The paper's removal table: a concept's pixels removed by its top units vs. by random units."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from gdx.causal.alpha import optimize_units
from gdx.causal.effects import EffectRunner
from gdx.causal.ranking import IouTable, rank_by_ace, rank_by_iou, random_units
from gdx.causal.results import CausalEffect, RemovalRow, RemovalTable, UnitRanking
from gdx.errors import InterventionError
from gdx.interfaces import Generator, Segmenter


def _signed_max(side: dict[str, float], keep: set[str] | None = None) -> float:
    """The value of largest magnitude (sign kept) among the keys in ``keep`` (all when None); 0 if none."""
    values = [v for k, v in side.items() if keep is None or k in keep]
    return max(values, key=abs, default=0.0)


def _rank(
    generator: Generator, segmenter: Segmenter, layer: str, concept: str, *, method: str, samples: int, seed: int,
    epochs: int, init: IouTable | UnitRanking | None, batch_size: int | None,
    probs: Callable[[torch.Tensor], torch.Tensor] | None, optimize_options: dict[str, Any],
) -> UnitRanking:
    """Rank the layer's units for ``concept`` by ``method`` ("alpha", "iou" or "ace")."""
    if method == "alpha":
        return optimize_units(
            generator, segmenter, layer, concept, samples=samples, seed=seed, epochs=epochs, init=init,
            batch_size=batch_size, probs=probs, **optimize_options,
        )
    if method == "iou":
        if init is None or isinstance(init, UnitRanking):
            raise InterventionError("method='iou' needs init=<Dissection or units x labels IoU table>")
        return rank_by_iou(init, concept, labels=segmenter.labels, layer=layer)
    if method == "ace":
        return rank_by_ace(generator, segmenter, layer, concept, samples=samples, seed=seed, batch_size=batch_size)
    raise InterventionError(f"unknown ranking method {method!r}: use 'alpha', 'iou' or 'ace'")


def _row(
    runner: EffectRunner, units: list[int], controls: list[list[int]], eff: CausalEffect,
    ctls: list[CausalEffect], side_min_coverage: float,
) -> RemovalRow:
    """One concept's row from its top units' effect ``eff`` and the random controls' ``ctls``."""
    coverage = runner.baseline().mean(0)
    major = {name for j, name in enumerate(runner.segmenter.labels) if float(coverage[j]) >= side_min_coverage}
    random_side = {name: sum(c.side_effects[name] for c in ctls) / len(ctls) for name in ctls[0].side_effects}
    return RemovalRow(
        concept=runner.concept,
        units=units,
        removed=eff.removed,
        random_units=controls[0],
        random_removed=sum(c.removed for c in ctls) / len(ctls),
        side_effect=_signed_max(eff.side_effects, major),
        random_side_effect=_signed_max(random_side, major),
        coverage=float(eff.before.mean()),
        side_effects=eff.side_effects,
        random_side_effects=random_side,
        random_draws=controls,
        random_removed_draws=[c.removed for c in ctls],
        random_worst_side_effect=_signed_max(
            {f"{d}:{k}": v for d, c in enumerate(ctls) for k, v in c.side_effects.items() if k in major}
        ),
    )


def removal_table(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    concepts: Sequence[str],
    *,
    top: int = 20,
    method: str = "alpha",
    samples: int = 200,
    seed: int = 0,
    eval_seed: int = 1,
    epochs: int = 3,
    init: IouTable | UnitRanking | None = None,
    control_seed: int = 1,
    batch_size: int | None = None,
    probs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[str], None] | None = None,
    side_min_coverage: float = 0.01,
    control_draws: int = 5,
    **optimize_options: Any,
) -> RemovalTable:
    """For each concept: rank units (``method`` "alpha", "iou" or "ace") on samples of
    ``seed``, then measure on held-out samples of ``eval_seed`` the fraction of its
    pixels removed by ablating the top ``top`` units vs. ``top`` random units
    (``control_seed``), and the largest change of any other concept.
    ``init`` (a Dissection) seeds alpha and is required for ``method="iou"``;
    The summary side effect is the largest |relative change| among concepts covering at
    least ``side_min_coverage`` of the pixels (relative changes of rarer concepts are
    noise-dominated; every concept's figure stays in the row's ``side_effects``).
    ``probs`` and ``optimize_options`` (``mode``, ``insert_weight``, ``lr``...) are passed
    to :func:`optimize_units`. The random control is the mean over ``control_draws``
    draws of random units (seeds ``control_seed``, ``control_seed + 1``, ...).
    """
    if control_draws < 1:
        raise InterventionError(f"control_draws must be at least 1, got {control_draws}")
    rows = []
    for concept in concepts:
        if progress:
            progress(f"ranking units for {concept!r} ({method})")
        ranking = _rank(
            generator, segmenter, layer, concept, method=method, samples=samples, seed=seed, epochs=epochs,
            init=init, batch_size=batch_size, probs=probs, optimize_options=optimize_options,
        )
        n_units = ranking.scores.numel()
        units = ranking.top(top)
        controls = [random_units(n_units, top, seed=control_seed + d) for d in range(control_draws)]
        runner = EffectRunner(
            generator, segmenter, layer, concept, samples=samples, seed=eval_seed, batch_size=batch_size
        )
        if progress:
            progress(f"measuring {concept!r}")
        eff = runner.effect(units, insert=False)
        ctls = [runner.effect(control, insert=False) for control in controls]
        rows.append(_row(runner, units, controls, eff, ctls, side_min_coverage))
    return RemovalTable(layer=layer, method=method, top=top, samples=samples, seed=eval_seed, rows=rows)
