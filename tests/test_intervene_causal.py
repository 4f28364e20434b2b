"""Causal effects, rankings, alpha optimisation and location maps on a world with known causes."""

from __future__ import annotations

import pytest
import torch

import gdx
from gdx.causal import (
    CausalEffect,
    CumulativeCurve,
    LocationMap,
    NotDifferentiableError,
    UnitRanking,
    causal_effect,
    cumulative_effect,
    location_map,
    optimize_units,
    rank_by_ace,
    rank_by_iou,
    removal_table,
)
from gdx.intervention import intervene
from gdx.sampling import concept_mask, segment_images
from intervene_worlds import STREET_LABELS, street_pair

TREE_UNITS = [0, 1, 2]


@pytest.fixture(scope="module")
def street():
    return street_pair()


def test_ablating_causal_units_removes_the_concept(street):
    gen, seg = street
    eff = causal_effect(gen, seg, "features", TREE_UNITS, "tree", samples=80, seed=0)
    assert eff.removed > 0.9
    assert eff.contains.sum() > 10
    assert eff.ace > 0.5 and eff.added > 0.5
    assert set(eff.side_effects) <= set(STREET_LABELS) - {"tree"}


def test_ablating_a_correlating_unit_removes_almost_nothing(street):
    gen, seg = street
    eff = causal_effect(gen, seg, "features", [3], "tree", samples=80, seed=0)
    assert abs(eff.removed) < 0.02
    assert abs(eff.ace) < 0.02


def test_single_causal_unit_is_not_enough_but_ace_ranks_it(street):
    gen, seg = street
    ranking = rank_by_ace(gen, seg, "features", "tree", units=[0, 3, 8], samples=30)
    assert ranking.scores[0] > ranking.scores[3]
    assert torch.isinf(ranking.scores[1])  # not a candidate


def test_multilabel_segmentation_counts_any_head(street):
    gen, seg = street

    class TwoHeads(gdx.Segmenter):
        labels = seg.labels

        def segment(self, images):
            one = seg.segment(images)
            return torch.stack([one, torch.full_like(one, -1)], 1)

    a = causal_effect(gen, seg, "features", TREE_UNITS, "tree", samples=20, insert=False)
    b = causal_effect(gen, TwoHeads(), "features", TREE_UNITS, "tree", samples=20, insert=False)
    assert a.removed == pytest.approx(b.removed)
    assert torch.allclose(a.before, b.before)


def test_insertion_respects_the_context_rule(street):
    gen, seg = street
    z = gen.sample_latents(40, seed=0)
    with torch.no_grad():
        base = segment_images(seg, gen.generate(z))
        with intervene(gen, "features", [7], value=("insert", "door"), segmenter=seg, samples=80):
            after = segment_images(seg, gen.generate(z))
    sky = (base == -1).all(dim=1)
    new_door = concept_mask(after, 3) & ~concept_mask(base, 3)
    assert new_door.sum() > 100  # doors were added ...
    assert (new_door & sky).sum() <= 0.01 * new_door.sum()  # ... but not in the sky


def test_location_map_marks_where_a_door_can_go(street, tmp_path):
    gen, seg = street
    z = gen.sample_latents(200, seed=0)
    # a sample without tree/rock so the map shows only the building context
    index = next(i for i in range(200) if z[i, 2] <= -0.5 and z[i, 5] <= -0.5 and z[i, 9] <= 0)
    loc = location_map(gen, seg, "features", [7], "door", sample=index, seed=0, radius=0, value_samples=80)
    assert loc.gain.shape == (8, 8)
    top = 0.45 + 0.2 * torch.sigmoid(z[index, 6])
    rows = (torch.arange(8) + 0.5) / 8
    sky_rows = rows < top - 0.15
    wall_rows = rows > top + 0.15
    assert loc.gain[wall_rows].min() > 0.2
    assert loc.gain[sky_rows].abs().max() < 0.01
    png = loc.save_png(tmp_path / "loc.png", size=64)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = LocationMap.load(loc.save(tmp_path / "loc.json"))
    assert torch.allclose(back.gain, loc.gain)


def test_alpha_ranks_every_causal_unit_above_every_distractor(street, tmp_path):
    gen, seg = street
    ranking = optimize_units(gen, seg, "features", "tree", samples=60, seed=0, epochs=4)
    causal = ranking.scores[TREE_UNITS]
    distractors = ranking.scores[[u for u in range(12) if u not in TREE_UNITS]]
    assert float(causal.min()) > float(distractors.max())
    assert set(ranking.top(3)) == set(TREE_UNITS)
    assert ranking.history[-1] < ranking.history[0]
    back = UnitRanking.load(ranking.save(tmp_path / "rank.json"))
    assert back.top(3) == ranking.top(3) and back.method == "alpha"


def test_iou_ranking_is_fooled_by_correlation_and_alpha_is_not(street):
    gen, seg = street
    iou = torch.zeros(12, 4)
    iou[[0, 1, 2, 3], 0] = torch.tensor([0.5, 0.5, 0.5, 0.6])  # the unread copy correlates best
    by_iou = rank_by_iou(iou, "tree", labels=STREET_LABELS)
    assert by_iou.top(1) == [3]
    by_alpha = optimize_units(gen, seg, "features", "tree", samples=40, epochs=6, group=10, init=iou)
    assert float(by_alpha.scores[3]) < float(by_alpha.scores[TREE_UNITS].min())


def test_optimize_needs_soft_probabilities(toy_pair):
    gen, seg = toy_pair
    with pytest.raises(NotDifferentiableError, match="segment_logits"):
        optimize_units(gen, seg, "features", "sun", samples=8, epochs=1)


def test_cumulative_curve_and_result_files(street, tmp_path):
    gen, seg = street
    curve = cumulative_effect(gen, seg, "features", [0, 1, 2, 3], "tree", n_max=4, samples=40)
    assert curve.n == [1, 2, 3, 4]
    assert curve.removed[0] < 0.9 < curve.removed[1]  # one unit alone cannot paint a tree
    assert curve.removed[3] == pytest.approx(curve.removed[2])
    back = CumulativeCurve.load(curve.save(tmp_path / "curve.json"))
    assert back.removed == curve.removed
    eff = causal_effect(gen, seg, "features", TREE_UNITS, "tree", samples=20)
    again = CausalEffect.load(eff.save(tmp_path / "eff.json"))
    assert again.removed == eff.removed and torch.equal(again.contains, eff.contains)
    with pytest.raises(gdx.ResultFormatError):
        UnitRanking.load(tmp_path / "eff.json")


def test_removal_table_with_random_control(street):
    gen, seg = street
    iou = torch.zeros(12, 4)
    iou[[0, 1, 2], 0] = 1.0
    iou[[4, 5], 1] = 1.0
    table = removal_table(gen, seg, "features", ["tree", "rock"], top=3, method="iou", init=iou, samples=40)
    rows = {r.concept: r for r in table.rows}
    assert rows["tree"].removed > 0.9 and rows["rock"].removed > 0.9
    assert "| tree |" in table.to_markdown() and "mean of 5 draws" in table.to_markdown()
    # The control is the mean over 5 independent draws of random units; the worst draw is kept.
    row = rows["tree"]
    assert len(row.random_draws) == 5 and len({tuple(d) for d in row.random_draws}) > 1
    assert row.random_removed == pytest.approx(sum(row.random_removed_draws) / 5)
    assert abs(row.random_worst_side_effect) >= abs(row.random_side_effect) - 1e-9
    one = removal_table(gen, seg, "features", ["tree"], top=3, method="iou", init=iou, samples=40, control_draws=1)
    assert one.rows[0].random_removed == pytest.approx(row.random_removed_draws[0])
    with pytest.raises(gdx.InterventionError, match="control_draws"):
        removal_table(gen, seg, "features", ["tree"], top=3, method="iou", init=iou, samples=40, control_draws=0)


def test_alpha_cell_mode_reads_each_term_where_it_edited(street):
    gen, seg = street
    ranking = optimize_units(gen, seg, "features", "tree", samples=60, seed=0, epochs=4, mode="cell")
    causal = ranking.scores[TREE_UNITS]
    distractors = ranking.scores[[u for u in range(12) if u not in TREE_UNITS]]
    assert float(causal.min()) > float(distractors.max())
    with pytest.raises(gdx.InterventionError, match="mode"):
        optimize_units(gen, seg, "features", "tree", samples=8, mode="corner")


def test_ranking_ties_broken_by_tiebreak_then_index(tmp_path):
    r = UnitRanking("l", "c", "alpha", torch.tensor([1.0, 0.5, 1.0, 1.0]), tiebreak=torch.tensor([0.0, 9.0, 2.0, 1.0]))
    assert r.order == [2, 3, 0, 1]
    assert UnitRanking("l", "c", "iou", torch.tensor([0.2, 0.2, 0.3])).order == [2, 0, 1]
    back = UnitRanking.load(r.save(tmp_path / "r.json"))
    assert back.order == r.order


def test_greedy_selection_finds_the_causal_set_and_scores_each_round_like_intervene(street):
    """select_units: three rounds over all 12 units find the three tree units (together they
    remove it); round 1's score is the best single unit's, measured again with gdx.intervene
    on the same focus samples (each row of a batched round has its own unit mask)."""
    from gdx.causal import select_units

    gen, seg = street
    ranking = select_units(gen, seg, "features", "tree", list(range(12)), n=3, pool=40, focus=8, seed=0, rows=24)
    assert ranking.method == "greedy" and set(ranking.top(3)) == set(TREE_UNITS)
    assert ranking.history[-1] > 0.9 and len(ranking.history) == 3
    z = gen.sample_latents(40, seed=0)
    with torch.no_grad():
        tree = concept_mask(segment_images(seg, gen.generate(z)), 0).flatten(1).sum(1).float()
        focus = z[torch.argsort(tree, descending=True, stable=True)[:8]]
        base = float(tree.sort(descending=True).values[:8].sum())
        single = []
        for u in range(12):
            with intervene(gen, "features", [u]):
                left = concept_mask(segment_images(seg, gen.generate(focus)), 0).sum()
            single.append(1 - float(left) / base)
    assert ranking.history[0] == pytest.approx(max(single), abs=1e-6)
    assert ranking.top(1) == [single.index(max(single))]
    with pytest.raises(gdx.InterventionError, match="at least n=3 distinct"):
        select_units(gen, seg, "features", "tree", [0, 1], n=3)


def test_greedy_shortlist_retries_only_the_best_of_the_round_before(street, monkeypatch):
    """shortlist=4: round 1 tries all 12 units, later rounds only the 4 best of the round
    before (counted at the forward passes), and the search still finds the tree units."""
    from gdx.causal import greedy, select_units

    gen, seg = street
    rows_per_round: list[int] = []
    real = greedy._concept_pixels

    def counting(generator, segmenter, layer, index, z, keep):  # type: ignore[no-untyped-def]
        if keep is not None:
            rows_per_round.append(len(keep) // 8)
        return real(generator, segmenter, layer, index, z, keep)

    monkeypatch.setattr(greedy, "_concept_pixels", counting)
    ranking = select_units(gen, seg, "features", "tree", list(range(12)), n=3, pool=40, focus=8, seed=0,
                           rows=800, shortlist=4)
    assert rows_per_round == [12, 4, 4]
    assert set(ranking.top(3)) == set(TREE_UNITS) and ranking.history[-1] > 0.9
    with pytest.raises(gdx.InterventionError, match="shortlist >= 1"):
        select_units(gen, seg, "features", "tree", list(range(12)), n=3, shortlist=0)
