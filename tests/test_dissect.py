"""Dissection numbers against brute-force torch computations on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gdx
from gdx.stats import iqr_from_counts
from gdx.plugins.toy_world import TOY_LABELS, toy_segment


def brute_force(gen, seg, layer, samples, seed, size=None):
    """All upsampled activations and labels, by plain torch (no streaming)."""
    z = gen.sample_latents(samples, seed=seed)
    with gdx.Trace(gen.module, layer) as tr:
        images = gen.generate(z)
    labels = seg.segment(images)
    if labels.ndim == 3:
        labels = labels[:, None]
    acts = F.interpolate(tr[layer], size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return acts, labels


def brute_iou(acts, labels, thresholds, num_labels):
    units = acts.shape[1]
    out = torch.zeros(units, num_labels)
    for u in range(units):
        mask = acts[:, u] > thresholds[u]
        for c in range(num_labels):
            lab = (labels == c).any(1)
            inter = (mask & lab).sum().item()
            union = (mask | lab).sum().item()
            out[u, c] = inter / max(union, 1)
    return out


def resized_segmenter(size):
    def segment(images):
        lab = toy_segment(images)
        return F.interpolate(lab[:, None].float(), size=size, mode="nearest")[:, 0].long()

    return gdx.wrap_segmenter(segment, labels=TOY_LABELS, name=f"toy{size[0]}")


@pytest.mark.parametrize("q", [0.99, 0.9, 0.7])
@pytest.mark.parametrize("seg_size", [None, (20, 20)])  # 8->32 is the block path; 8->20 the dense path
def test_quantile_iou_matches_brute_force(toy_pair, q, seg_size):
    gen, seg = toy_pair
    if seg_size is not None:
        seg = resized_segmenter(seg_size)
    d = gdx.dissect(gen, seg, "features", samples=120, seed=3, threshold=q, progress=False, batch_size=7)
    acts, labels = brute_force(gen, seg, "features", 120, 3)
    flat = acts.transpose(0, 1).reshape(acts.shape[1], -1)
    exact_t = torch.quantile(flat, q, dim=1)
    expected = brute_iou(acts, labels, exact_t, len(TOY_LABELS))
    assert torch.allclose(d.iou, expected, atol=0.01), (d.iou - expected).abs().max()
    # thresholds land where the exact quantile puts them (share of pixels above)
    share = (flat > d.thresholds[:, None]).double().mean(1)
    assert torch.allclose(share, torch.full_like(share, 1 - q), rtol=0.05, atol=1e-4)


def test_iqr_picks_brute_force_level(toy_pair):
    gen, seg = toy_pair
    d = gdx.dissect(gen, seg, "features", samples=80, seed=1, threshold="iqr", progress=False)
    acts, labels = brute_force(gen, seg, "features", 80, 1)
    units, levels_n = d.levels.shape
    C = len(TOY_LABELS)
    pixels = labels.shape[0] * labels.shape[-2] * labels.shape[-1]
    lab = torch.stack([(labels == c).any(1) for c in range(C)])  # C, N, H, W
    area = lab.flatten(1).sum(1)
    for u in range(units):
        above = torch.zeros(levels_n, dtype=torch.int64)
        cooc = torch.zeros(levels_n, C, dtype=torch.int64)
        for j in range(levels_n):
            m = acts[:, u] > d.levels[u, j]
            above[j] = m.sum()
            cooc[j] = (m[None] & lab).flatten(1).sum(1)
        iqr = iqr_from_counts(above[None], cooc[None], area, pixels)[0]  # L, C
        iqr[:, (area.double() / pixels) < 1e-3] = -1
        # the rule's 100 candidates: per top fraction, the counted level with the closest exact share above
        fractions = torch.logspace(0, -3, 100, dtype=torch.float64)
        cand = (above.double()[None, :] - fractions[:, None] * pixels).abs().argmin(1)
        k, c = divmod(int(iqr[cand].flatten().argmax()), C)
        j = int(cand[k])
        assert d.thresholds[u] == d.levels[u, j], f"unit {u}: level {d.thresholds[u]} vs {d.levels[u, j]}"
        assert d.unit_labels[u].label == TOY_LABELS[c]
        assert math.isclose(d.unit_labels[u].iqr, float(iqr[j, c]), abs_tol=1e-4)


def test_iqr_formula_against_scipy_free_reference():
    # I(A;B)/H(A,B) for an independent table is 0; for identical A=B it is 1.
    above = torch.tensor([[50]])
    area = torch.tensor([50])
    same = iqr_from_counts(above, torch.tensor([[[50]]]), area, 100)
    indep = iqr_from_counts(above, torch.tensor([[[25]]]), area, 100)
    assert math.isclose(float(same), 1.0, abs_tol=1e-6)
    assert math.isclose(float(indep), 0.0, abs_tol=1e-6)


def test_known_units_are_found_including_unused_correlate(toy_pair):
    gen, seg = toy_pair
    d = gdx.dissect(gen, seg, "features", samples=200, threshold=0.9, progress=False)
    labels = [u.label for u in d.unit_labels]
    assert labels[:4] == TOY_LABELS and labels[4:8] == TOY_LABELS
    # unit 9 copies the sun unit but is never used downstream: dissection still finds it
    assert labels[9] == "sun" and d.unit_labels[9].iou > 0.3
    # the noise unit is not interpretable at a sensible cut-off
    assert d.unit_labels[8].iou < d.unit_labels[0].iou / 3


def test_two_shards_merge_to_one_run(toy_pair):
    gen, seg = toy_pair
    whole = gdx.dissect(gen, seg, "features", samples=90, seed=5, progress=False, batch_size=8)
    run = gdx.DissectionRun(gen, seg, ["features"], samples=90, seed=5, batch_size=8)
    p1 = run.level_pass(0, 41)
    p1.merge(run.level_pass(41, 90))
    c_a = run.count_pass(p1, 0, 41)
    c_b = run.count_pass(p1, 41, 90)
    c_a.merge(c_b)
    [merged] = run.results(p1, c_a)
    assert torch.allclose(merged.iou, whole.iou, atol=0.01)
    assert torch.equal(merged.iou, whole.iou)  # the hash-chosen sketch makes the merge exact
    assert torch.equal(merged.top_indices, whole.top_indices)


def test_same_seed_same_numbers(toy_pair):
    gen, seg = toy_pair
    a = gdx.dissect(gen, seg, "features", samples=50, seed=2, progress=False)
    b = gdx.dissect(gen, seg, "features", samples=50, seed=2, progress=False)
    c = gdx.dissect(gen, seg, "features", samples=50, seed=9, progress=False)
    assert torch.equal(a.iou, b.iou) and torch.equal(a.thresholds, b.thresholds)
    assert not torch.equal(a.iou, c.iou)


def test_statistics_size_is_independent_of_sample_count():
    gen = gdx.load_generator("toy", resolution=16)
    seg = gdx.load_segmenter("toy")

    def state_bytes(n):
        run = gdx.DissectionRun(gen, seg, ["features"], samples=n, batch_size=250, sketch_size=4096)
        p1 = run.level_pass()
        p2 = run.count_pass(p1)
        return sum(t.numel() * t.element_size() for t in {**p1.state_dict(), **p2.state_dict()}.values())

    assert state_bytes(1000) == state_bytes(10000)


def test_multiple_layers_share_passes(toy_pair):
    gen, seg = toy_pair
    a, b = gdx.dissect(gen, seg, ["features", "decoder"], samples=40, progress=False)
    single = gdx.dissect(gen, seg, "features", samples=40, progress=False)
    assert a.layer == "features" and b.layer == "decoder" and b.units == 3
    assert torch.equal(a.iou, single.iou)


def test_save_load_roundtrip(tmp_path, toy_pair):
    gen, seg = toy_pair
    d = gdx.dissect(gen, seg, "features", samples=30, threshold="iqr", progress=False)
    d.save(tmp_path / "r")
    e = gdx.Dissection.load(tmp_path / "r")
    assert torch.equal(d.iou, e.iou) and torch.equal(d.iqr, e.iqr)
    assert d.unit_labels == e.unit_labels and d.settings == e.settings
    assert e.summary().per_concept == d.summary().per_concept
    assert not list(tmp_path.rglob("*.tmp"))


def test_load_of_unfinished_folder_is_clear(tmp_path):
    with pytest.raises(gdx.ResultFormatError, match="not a finished"):
        gdx.Dissection.load(tmp_path)
