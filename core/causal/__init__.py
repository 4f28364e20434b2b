"""Causal effects of units on concepts (docs/method.md, "Intervention"): ablate, insert, rank, optimise, locate.

Dissection says which units *correlate* with a concept; this package measures which
units *cause* it, by editing the layer (:func:`gdx.intervene`) and segmenting the
result. All measurements use the dissection latents recipe
(``generator.sample_latents(n, seed=seed)``) and segment at the segmenter's
``input_size``, so a sample here is the same image as in a dissection.

>>> eff = gdx.causal_effect(gen, seg, "layer4", tree_units, "tree", samples=200)
>>> eff.removed, eff.added, eff.ace
>>> rank = gdx.optimize_units(gen, seg, "layer4", "tree", init=dissection)
>>> curve = gdx.cumulative_effect(gen, seg, "layer4", rank, "tree", n_max=20)

Modules:

* :mod:`~gdx.causal.results`: the result dataclasses (:class:`CausalEffect`,
  :class:`UnitRanking`, :class:`CumulativeCurve`, :class:`RemovalRow`,
  :class:`RemovalTable`, :class:`LocationMap`), each saved as one JSON file.
* :mod:`~gdx.causal.effects`: :class:`EffectRunner` (pixel fractions under edits on
  fixed latents), :func:`causal_effect`, :func:`cumulative_effect`.
* :mod:`~gdx.causal.ranking`: :func:`rank_by_iou`, :func:`rank_by_ace`, :func:`random_units`.
* :mod:`~gdx.causal.alpha`: the learned soft unit mask, :func:`optimize_units`, and
  :func:`segment_probs` (the differentiable segmentation it needs).
* :mod:`~gdx.causal.greedy`: the hard version of α, :func:`select_units` (greedy forward
  selection of a unit set under real ablation).
* :mod:`~gdx.causal.removal`: the paper's removal table, :func:`removal_table`.
* :mod:`~gdx.causal.location`: where a concept can be inserted, :func:`location_map`.
* :mod:`~gdx.causal.saved`: find saved results in a run folder, :func:`find_causal_results`.
"""

from gdx.causal.alpha import optimize_units, segment_probs
from gdx.causal.effects import MIN_SIDE_COVERAGE, EffectRunner, causal_effect, cumulative_effect
from gdx.causal.greedy import select_units
from gdx.causal.location import location_map
from gdx.causal.ranking import rank_by_ace, rank_by_iou, random_units
from gdx.causal.removal import removal_table
from gdx.causal.results import (
    CausalEffect,
    CumulativeCurve,
    LocationMap,
    RemovalRow,
    RemovalTable,
    UnitRanking,
)
from gdx.causal.saved import CausalResults, find_causal_results
from gdx.errors import InterventionError, NotDifferentiableError  # raised here; re-exported for callers

__all__ = [
    "CausalEffect",
    "CausalResults",
    "CumulativeCurve",
    "EffectRunner",
    "InterventionError",
    "LocationMap",
    "MIN_SIDE_COVERAGE",
    "NotDifferentiableError",
    "RemovalRow",
    "RemovalTable",
    "UnitRanking",
    "causal_effect",
    "cumulative_effect",
    "find_causal_results",
    "location_map",
    "optimize_units",
    "random_units",
    "rank_by_ace",
    "rank_by_iou",
    "removal_table",
    "segment_probs",
    "select_units",
]
