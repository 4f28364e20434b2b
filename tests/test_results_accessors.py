"""`Dissection.top_units` returns only units that overlap the concept; `iou_of` reads any concept's IoU."""

from __future__ import annotations

import pytest
import torch

from gdx.results import Dissection, DissectionSettings, UnitLabel


def _dissection() -> Dissection:
    # 5 units x 2 concepts: only units 3 and 1 overlap "tree" at all.
    iou = torch.tensor([[0.0, 0.4], [0.10, 0.3], [0.0, 0.2], [0.25, 0.6], [0.0, 0.1]])
    labels = ["tree", "sky"]
    best = [UnitLabel(u, labels[int(iou[u].argmax())], float(iou[u].max())) for u in range(5)]
    return Dissection(
        layer="l", labels=labels, categories={}, iou=iou, thresholds=torch.zeros(5), unit_labels=best,
        top_indices=torch.zeros(5, 1, dtype=torch.long), top_values=torch.zeros(5, 1),
        settings=DissectionSettings("g", "s", "l", 10, 0, 0.99, 8),
    )


def test_top_units_returns_fewer_and_says_so():
    d = _dissection()
    with pytest.warns(UserWarning, match=r"only 2 of 5 units of l have IoU > 0 with 'tree'"):
        assert d.top_units("tree", n=20) == [3, 1]
    with pytest.warns(UserWarning):
        assert d.top_units("sky", n=20) == [3, 0, 1, 2, 4]


def test_top_units_without_warning_when_enough(recwarn):
    d = _dissection()
    assert d.top_units("sky", n=3) == [3, 0, 1]
    assert d.top_units("tree", n=2) == [3, 1]
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    with pytest.raises(KeyError, match="unknown concept 'grass'"):
        d.top_units("grass")


def test_iou_of_gives_the_concepts_iou_not_the_best_labels():
    d = _dissection()
    assert d.unit_labels[3].label == "sky" and d.unit_labels[3].iou == pytest.approx(0.6)
    assert d.iou_of(3, "tree") == pytest.approx(0.25)
    assert d.iou_of(3, "sky") == pytest.approx(0.6)
    with pytest.raises(IndexError, match="units 0..4"):
        d.iou_of(5, "tree")
    with pytest.raises(KeyError):
        d.iou_of(0, "grass")
