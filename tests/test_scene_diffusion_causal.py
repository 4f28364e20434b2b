"""Issue 15's causal acceptance on the shipped scene-diffusion weights: units found, and units that matter.

* Dissection of the middle block at the middle step (``mid@4``, the default layer) finds
  interpretable units for >= 8 concepts, and far more significant units than the same
  architecture re-initialised (``control="random-weights"``).
* Ablating the top-20 units of a concept over the step window docs/diffusion.md recommends
  for removal (``mid@0-9``: every step) removes >= 50% of its pixels for >= 3 concepts, tree
  among them, on held-out samples (latent seed 2: never used by the search, seed 0, nor to
  choose which concepts to search, seed 1), while 20 random units of the same block change
  every concept covering >= 1% of the pixels by < 15% (mean of 3 draws). Tree is at the
  bar's edge (0.504 here; 0.490-0.553 on 200 samples of each of seeds 2-5, 0.514 over the
  800): docs/diffusion.md has every held-out number.

The units are ranked causally: α over the window, then greedy selection under hard ablation
(``gdx.select_units``), on latent seed 0 only. That search takes about 20 minutes per concept
on two cores, so it is not run here: ``tools/scenes/diffusion_removal.py`` wrote the rankings to
``docs/results/diffusion_rankings/`` with the hash of the weights they belong to, and this test
measures them on samples the search never saw. (The ranking by IoU alone removes about half
as much: docs/diffusion.md, "Findings"; not measured here, to save CI time.)
``tools/scenes/diffusion_findings.py`` measures more on more samples; CI uses fewer
(``DISSECT_SAMPLES``, ``EVAL_SAMPLES``) to stay within its time budget, and the bars are the issue's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import gdx
from gdx.causal import random_units
from tools.scenes.diffusion_findings import label_fractions_under, removed_fraction

pytestmark = pytest.mark.slow

LAYER = "mid@4"
#: the ablation window docs/diffusion.md recommends (Findings: every step removes the most)
WINDOW = "mid@0-9"
DISSECT_SAMPLES = 80
EVAL_SAMPLES = 80
#: held-out latent seed: the search used seed 0; seed 1 helped choose the concepts (docs/diffusion.md)
EVAL_SEED = 2
#: concepts measured; the bar is >= 3 of them at >= 50%, tree among them
#: (road, building and window are shipped too and measured in docs/diffusion.md: 0.38-0.42 on 200 samples of
#: seed 2; left out here to keep the suite within its time budget)
CONCEPTS = ("tree", "brick", "water")
RANKINGS = Path(__file__).resolve().parents[1] / "docs" / "results" / "diffusion_rankings"
TOP = 20
CONTROL_DRAWS = 3


@pytest.fixture(scope="module")
def pair() -> tuple[gdx.Generator, gdx.Segmenter]:
    return gdx.load_generator("scene-diffusion"), gdx.load_segmenter("scene")


@pytest.fixture(scope="module")
def dissection(pair) -> gdx.Dissection:
    gen, seg = pair
    return gdx.dissect(gen, seg, LAYER, samples=DISSECT_SAMPLES, seed=0, batch_size=50, progress=False)


def fractions(gen: gdx.Generator, seg: gdx.Segmenter, units: list[int] | None = None) -> torch.Tensor:
    """Label pixel fractions N x L of the held-out samples (EVAL_SEED), with ``units`` of WINDOW off."""
    layer = None if units is None else WINDOW
    return label_fractions_under(gen, seg, EVAL_SAMPLES, EVAL_SEED, layer, units, batch_size=50)[0]


def test_middle_block_at_middle_step_has_units_for_8_concepts_and_beats_random_weights(pair, dissection):
    gen, seg = pair
    summary = dissection.summary(iou_min=0.05)
    assert len(summary.per_concept) >= 8, dict(summary.per_concept)
    control = gdx.dissect(gen, seg, LAYER, samples=DISSECT_SAMPLES, seed=0, batch_size=50, progress=False,
                          control="random-weights")
    trained, random = len(dissection.significant(0.05)), len(control.significant(0.05))
    print(f"{LAYER}, {DISSECT_SAMPLES} samples: significant units trained {trained}, random-weights {random}; "
          f"interpretable trained {summary.interpretable}, random {control.summary(iou_min=0.05).interpretable}")
    # "clearly more": at least a fifth of the layer's 256 units more, and at least 3x the control
    assert trained >= random + dissection.units // 5 and trained >= 3 * random, (trained, random)


def shipped_rankings(gen: gdx.Generator) -> dict[str, gdx.UnitRanking]:
    """The causal rankings tools/scenes/diffusion_removal.py wrote, checked against the shipped weights."""
    from gdx.plugins.generators.scene_diffusion import WEIGHTS_DIR, WEIGHTS_NAME

    command = json.loads((RANKINGS / "command.json").read_text())
    weights = hashlib.sha256((WEIGHTS_DIR / WEIGHTS_NAME).read_bytes()).hexdigest()
    assert command["weights_sha256"] == weights, (
        "the shipped rankings were made for other weights: run tools/scenes/diffusion_removal.py again")
    rankings = {c: gdx.load_result(RANKINGS / f"{c}.json") for c in CONCEPTS}
    assert all(r.layer == WINDOW and r.method == "greedy" and r.concept == c for c, r in rankings.items())
    return rankings


@pytest.fixture(scope="module")
def removal(pair, dissection) -> tuple[dict[str, float], dict[str, float]]:
    """(fraction removed by the top causal units per concept, mean relative change by random units
    per concept covering >= 1% of the pixels), on the held-out samples, over WINDOW."""
    gen, seg = pair
    labels = list(seg.labels)
    before = fractions(gen, seg)
    rankings = shipped_rankings(gen)
    result = {c: removed_fraction(before, fractions(gen, seg, rankings[c].top(TOP)), labels.index(c)) for c in CONCEPTS}
    draws = [fractions(gen, seg, random_units(dissection.units, TOP, seed=1 + d)) for d in range(CONTROL_DRAWS)]
    major = [j for j in range(len(labels)) if float(before[:, j].mean()) >= 0.01]
    control = {labels[j]: sum(-removed_fraction(before, a, j) for a in draws) / CONTROL_DRAWS for j in major}
    print(f"{WINDOW}, {EVAL_SAMPLES} held-out samples: top-{TOP} causal units removed "
          + ", ".join(f"{c} {v:.3f}" for c, v in result.items())
          + f"; {TOP} random units (mean of {CONTROL_DRAWS}): "
          + ", ".join(f"{c} {v:+.2f}" for c, v in control.items()))
    return result, control


def test_top_units_over_the_window_remove_half_of_three_concepts_tree_among_them(removal):
    result, _ = removal
    passed = [c for c, v in result.items() if v >= 0.5]
    assert "tree" in passed and len(passed) >= 3, result


def test_random_units_of_the_block_change_every_concept_by_under_15_percent(removal):
    _, control = removal
    assert all(abs(v) < 0.15 for v in control.values()), control
