"""Every registered metric is built and run once, with the merge/state contract checked.

As in test_adapter_smoke.py, the metrics are listed from the default registry at
collection time: a metric registered without an entry in ``METRIC_CASES`` FAILS here,
naming the table to extend. An entry says how to build the metric and what to feed it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import gdx
from gdx.interfaces import Metric
from gdx.scenes import render_scenes


@dataclass
class DissectionCase:
    """A dissection score: run it through ``gdx.dissect`` on the toy pair (known answers)."""

    threshold: float | str


@dataclass
class QualityCase:
    """An image-quality score: ``factory(**options)``, then batches of images."""

    options: dict[str, Any]
    images: Callable[[int, int], torch.Tensor]
    reference: bool = True  # compares with real images (set_reference) rather than judging alone
    non_negative: bool = True  # a distance; a critic's mean logit may be negative


def _scene_images(n: int, seed: int) -> torch.Tensor:
    return render_scenes(n, seed=seed).images


METRIC_CASES: dict[str, DissectionCase | QualityCase] = {
    "iou": DissectionCase(0.99),
    "iqr": DissectionCase("iqr"),
    "frechet": QualityCase({"features": "segmenter", "segmenter": "scene"}, _scene_images),
    "scene-realism": QualityCase({}, _scene_images, reference=False, non_negative=False),
}


def _registered() -> list[str]:
    return sorted(gdx.default_registry().infos("metric"))


def _case(name: str) -> DissectionCase | QualityCase:
    if name not in METRIC_CASES:
        pytest.fail(f"metric {name!r} is registered but has no smoke-test entry: add one to METRIC_CASES "
                    "in tests/test_metrics_smoke.py")
    return METRIC_CASES[name]


@pytest.mark.parametrize("name", _registered())
def test_metric_runs_and_merges(name):
    case = _case(name)
    if isinstance(case, DissectionCase):
        gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
        d = gdx.dissect(gen, seg, "features", samples=60, threshold=case.threshold, metric=name, progress=False)
        assert d.settings.metric == name
        assert d.unit_labels[0].label == "sun" and d.unit_labels[0].iou > d.settings.iou_min  # toy unit 0 draws the sun
        return
    metric = gdx.default_registry().build("metric", name, **case.options)
    assert isinstance(metric, Metric)
    if case.reference:
        metric.set_reference(case.images(48, 1))
    whole, first, second = metric.fresh(), metric.fresh(), metric.fresh()
    images = case.images(32, 2)
    whole.update(images)
    first.update(images[:16])
    second.update(images[16:])
    first.merge(second)
    assert abs(first.result() - whole.result()) < 1e-6 * max(1.0, abs(whole.result()))
    restored = metric.fresh()
    restored.load_state_dict(whole.state_dict())
    assert restored.result() == pytest.approx(whole.result(), rel=1e-9)
    assert whole.result() >= 0.0 or not case.non_negative


def test_a_metric_without_a_smoke_entry_fails():
    with pytest.raises(pytest.fail.Exception, match="METRIC_CASES"):
        _case("registered-but-untested")
